"""Experiments: things that train in order to measure.

`hf_wagle.evaluation` only measures a model it is given; the experiments here unlearn models themselves (through
`WagleTrainer`) and measure what each run did.

Modules: `compare` (`compare_masks`: unlearn the same model and data through several masks and seeds, and compare the
utility each keeps at matched forgetting; the library side of `hf-wagle compare-masks`), and `robustness` (`audit`:
whether a run's forgetting survives quantisation, relearning and another prompt format; the library side of
`hf-wagle audit`).
"""
