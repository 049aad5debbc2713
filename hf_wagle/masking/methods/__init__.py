"""The built-in mask methods, one file each; importing this package registers them (in this order). A method of
your own is one file like these (see `hf_wagle.masking`)."""

from . import wagle, snip, gradient, grin, magnitude, uniform, wanda  # noqa: F401, I001
