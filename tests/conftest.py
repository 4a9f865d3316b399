import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# trackio reads its store's location once, at import: point it at a throw-away folder for the session
import tempfile  # noqa: E402

os.environ.setdefault("TRACKIO_DIR", tempfile.mkdtemp(prefix="progrl-trackio-"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
