"""The Hub: model cards built from the values they show, and publishing. Cards never contain forget-set text.

* `card.py`: `RunCard` (what an unlearning run's card shows) -> `model_card`; `run_card(trainer)` reads those values
  from a `WagleTrainer`, `write_model_card(directory, trainer)` writes its README.md; `export_card` /
  `write_export_card` describe an exported adapter from its export report (the format's `describe`).
* `push.py`: `push_to_hub` uploads a saved folder as it is, after `hf_wagle.verify` passes, only the files in
  `PUBLISHED` and with local paths removed (`stage_for_hub`); `dry_run` lists what would go.
* `names.py`: `public_name`, what a model reference may be published as (a Hub id, never a local path).

`Trainer.push_to_hub` and `PeftModel.push_to_hub` rewrite README.md with generic cards: `WagleTrainer` overrides
`create_model_card` so `trainer.push_to_hub()` keeps this card.
"""

from .card import (
    RunCard,
    card_for,
    eval_results,
    export_card,
    model_card,
    module_table,
    peft_load_snippet,
    run_card,
    write_export_card,
    write_model_card,
)
from .names import public_name
from .push import PUBLISHED, push_to_hub, stage_for_hub

__all__ = ["PUBLISHED", "RunCard", "card_for", "eval_results", "export_card", "model_card", "module_table",
           "peft_load_snippet", "public_name", "push_to_hub", "run_card", "stage_for_hub", "write_export_card",
           "write_model_card"]
