"""Names shared by the command line, the loaders and the converter, each defined once.

Plain values (and the one check of COMPATS) with no imports, so that `git-scratch --help` and the converter can read them without
loading torch, and so that no two modules need each other for a constant.
"""

# What the command exits with (documented in `git-scratch --help`).
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's code for Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: stdout was closed early (e.g. `| head -1`)
EXIT_TERMINATED = 143  # 128 + SIGTERM

# Files we read as images: folder listings, glob matches and frame folders.
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
# Video files, which `caption` cannot read: its error says to use `video`.
VIDEO_EXTS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"})

# A checkpoint's text files, copied by `convert` and `init` beside the weights.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
# A training run directory's pointer file: it names (one line) the run's last complete step-NNNNNN checkpoint.
LATEST = "latest"

# Image preprocessing settings: CLIPImageProcessor's own file, and transformers 5's GitProcessor file
# that nests the same keys under "image_processor". The first found is used.
PREPROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")

# Weight dtypes by name, as the command line and config files spell them (torch.<name>).
DTYPE_NAMES = ("float32", "bfloat16", "float16")

# How a loaded model may compute (`load(dtype=...)`, --dtype): a weight dtype for the whole model; BF16_VISION, the
# vision encoder in bfloat16 one image a call with the decoder float32 (load.py); or "auto", what is fast here.
BF16_VISION = "bfloat16-vision"
RUN_DTYPES = (*DTYPE_NAMES, BF16_VISION, "auto")
DTYPE_HELP = ("default: float32; bfloat16: the whole model (fastest on a GPU or a CPU with AMX, but on a CPU a result "
              "can change with the images batched beside it); bfloat16-vision: the vision encoder in bfloat16, one "
              "image a call, the decoder in float32 (on such a CPU ~2.5x faster vision, and a result never depends "
              "on its batch); auto: bfloat16 where the hardware is fast at it; with --quantize, the vision "
              "encoder's alone (the decoder stays float32 around its int8 products)")

# Weight quantisations `load(quantize=...)` and --quantize offer (quantize.py).
QUANTIZE_MODES = ("int8",)
QUANTIZE_HELP = ("int8: the decoder and LM head with int8 weights (per-channel scales, CPU only): a decode step ~3x "
                 "faster; ids may differ from float32's now and then (the README's Speed section measures how often); "
                 "results record it in their settings")

# Whose numbers to reproduce: transformers' GIT (its processor and generation), or microsoft/GenerativeImage2Text's
# own code (its preprocessing, question truncation and generation). The first is the default.
COMPATS = ("transformers", "original")


def check_compat(compat: str) -> str:
    """`compat` itself, if it names one of COMPATS (whose behaviour to reproduce); else a clear ValueError."""
    if compat not in COMPATS:
        raise ValueError(f"compat must be one of {', '.join(map(repr, COMPATS))}, got {compat!r}")
    return compat


# The activations a config may name (config.check_act); layers.ACTIVATIONS implements exactly these.
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "quick_gelu", "relu", "silu", "swish", "tanh")
