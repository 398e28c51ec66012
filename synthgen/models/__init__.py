"""Model building blocks (MSDM), model resolution and loading helpers."""


def quiet_libraries() -> None:
    """Silence diffusers/transformers load reports and progress bars: synthgen shows its own progress."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
