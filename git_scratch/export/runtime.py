"""An exported folder (onnx.py) run on onnxruntime, under the project's own searches.

`OnnxGIT` is what `generate` (generation/generate.py) needs of a model: `config`, `encode_image`, `mask`,
`device`, and `cached_decoder`, the decoder that generation/decoders.py's factory makes for it instead of
`Cached`. `OnnxCached` has Cached's interface, `prefill` / `decode_step` / `reorder`, so greedy search,
sampling, transformers' beam search and the original's beam search run over it unchanged. The caches live
here as numpy arrays and go into the decoder step graph as inputs; the step hands the text cache back with the
new tokens' keys/values written. Shapes: the legend in model.py (graphs.py for the graphs' inputs).
(On the CPU that costs next to nothing: onnxruntime reads numpy inputs in place, and binding two preallocated
text caches with IOBinding instead saved 0.1-0.2 ms of an 11-15 ms git-base step, within the noise.)

    model = OnnxGIT("git-base-coco-onnx")
    ids = model.generate(pixels, max_new_tokens=20, num_beams=4)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import GitConfig
from ..mask import git_mask
from ..model import check_pixels
from . import GRAPH_FILES, MANIFEST


def is_export(path) -> bool:
    """True for a folder `export-onnx` wrote."""
    return (Path(path) / MANIFEST).is_file()


def providers(device) -> list:
    """onnxruntime's execution providers for a --device: the CPU, or CUDA where onnxruntime-gpu is installed.
    ValueError for a device onnxruntime cannot run on here."""
    import onnxruntime as ort

    name = "auto" if device is None else str(device)
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if name == "cpu" or (name == "auto" and not cuda):
        return ["CPUExecutionProvider"]
    if name == "auto" or name.startswith("cuda"):
        if not cuda:
            raise ValueError(f"--device {name}: this onnxruntime has no CUDA provider (pip install "
                             "onnxruntime-gpu), so the export runs on the CPU only")
        index = int(name.partition(":")[2] or 0)
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise ValueError(f"--device {name}: an ONNX export runs on onnxruntime's CPU or CUDA providers only")


class OnnxCached:
    """Decoding over the exported graphs, with decoders.Cached's interface. Rows are image-major (R = Bi * K,
    K rows per image), as generate orders them; the graphs take them as (Bi, K)."""

    def __init__(self, model: OnnxGIT, image: torch.Tensor, n_rows: int, mask: torch.Tensor,
                 image_of: torch.Tensor | None = None):
        """Buffers for `n_rows` rows decoding from `image` (Bi, N, D) under `mask` (N + S, N + S), which
        must be the exported one (the graph computes it from N and S). `image_of` (P,): as decoders.Cached
        takes it, the image of each prompt when images have different numbers of prompts."""
        N = image.shape[1]
        Bi = image.shape[0] if image_of is None else len(image_of)  # groups of rows: the graphs' first axis
        if n_rows % Bi:
            raise ValueError(f"{n_rows} rows cannot be split evenly over {Bi} groups (images, or prompts)")
        if not torch.equal(mask.cpu(), git_mask(N, mask.shape[0] - N)):
            raise ValueError("an ONNX export decodes under the mask it was exported with (mask.git_mask)")
        t = model.config.text
        self.model, self.image, self.rows = model, image, (Bi, n_rows // Bi)
        self.image_of = None if image_of is None else image_of.cpu().numpy()
        S, Dh = mask.shape[0] - N, t.dim // t.n_heads
        self.text_kv = np.zeros((t.n_layers, 2, *self.rows, t.n_heads, S, Dh), dtype=np.float32)
        self.image_kv = None  # (n_layers, 2, G, H, N, Dh), from prefill: G groups of rows, self.rows[0]

    def step(self, ids: torch.Tensor, start: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """ids (R, n) into text slots start.. (start (R,)) -> logits (R, V) of each row's token `last` (R,)."""
        def rows(x):  # (R, ...) torch -> (Bi, K, ...) int64 numpy, as the graph takes it
            return np.ascontiguousarray(x.cpu().numpy().astype(np.int64).reshape(*self.rows, *x.shape[1:]))

        logits, self.text_kv = self.model.run("decoder_step.onnx", ids=rows(ids), start=rows(start),
                                              last=rows(last), text_kv=self.text_kv, image_kv=self.image_kv)
        return torch.from_numpy(logits.reshape(ids.shape[0], -1))

    def prefill(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The image's keys/values, then right-padded prompts ids (R, T) of `lengths` (R,) -> logits (R, V)."""
        (self.image_kv,) = self.model.run("image_prefill.onnx", image=self.image.cpu().numpy())
        if self.image_of is not None:  # each prompt's group reads a copy of its image's keys/values
            self.image_kv = np.ascontiguousarray(self.image_kv[:, :, self.image_of])
        return self.step(ids, torch.zeros_like(lengths), lengths - 1)

    def decode_step(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """tokens (R,) into text slots pos (R,) -> next-token logits (R, V)."""
        return self.step(tokens[:, None], pos, torch.zeros_like(pos))

    def reorder(self, rows: torch.Tensor) -> None:
        """Beam re-ranking: row r takes the text keys/values of row rows[r]."""
        shape = self.text_kv.shape
        flat = self.text_kv.reshape(*shape[:2], -1, *shape[4:])  # (n_layers, 2, R, H, S, Dh), a view
        self.text_kv = flat[:, :, rows.cpu().numpy()].reshape(shape)


class OnnxGIT:
    """An exported folder on onnxruntime, as the model generate() drives. float32, on the CPU (or CUDA with
    onnxruntime-gpu); the search itself runs in torch on the CPU."""

    cached_decoder = OnnxCached  # decoders.decoder makes this one for us, not Cached
    dtype = torch.float32
    device = torch.device("cpu")  # where generate keeps its tensors (the search); the graphs run on `providers`

    def __init__(self, path, device="cpu", threads: int | None = None, spinning: bool = False):
        """`threads`: onnxruntime's intra-op threads; None: torch's count (so OMP_NUM_THREADS holds for both).
        `spinning`: let onnxruntime's threads spin between calls. Off by default: torch runs the search between
        the graph calls in this same process, and spinning threads would hold the cores its threads need."""
        import onnxruntime as ort

        path = Path(path)
        if not is_export(path):
            raise FileNotFoundError(f"{path}: no {MANIFEST} (not a folder git-scratch export-onnx wrote)")
        self.config = GitConfig.from_json(path / "config.json")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.log_severity_level = 3  # errors only: its warnings about unused initializers are not the user's
        chosen = providers(device)
        self.sessions = {}
        for name in GRAPH_FILES:
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path / name}: missing; export the checkpoint again")
            try:
                self.sessions[name] = ort.InferenceSession(str(path / name), options, providers=chosen)
            except Exception as e:  # onnxruntime's own exception types: one message
                raise ValueError(f"{path / name}: onnxruntime cannot load it ({' '.join(str(e).split())})") from None
        self.pixel_shape = tuple(self.sessions["image_encoder.onnx"].get_inputs()[0].shape[1:])  # all but Bi

    def run(self, graph: str, **inputs: np.ndarray) -> list[np.ndarray]:
        return self.sessions[graph].run(None, inputs)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), or a video checkpoint's (B, F, 3, H, W) -> image tokens (B, N, D)."""
        check_pixels(self.config, pixels)
        if tuple(pixels.shape[1:]) != self.pixel_shape:
            video = " (a video checkpoint's export takes all its frames)" if self.config.n_frames else ""
            raise ValueError(f"this ONNX export takes pixel_values (B, {', '.join(map(str, self.pixel_shape))})"
                             f"{video}; got {tuple(pixels.shape)}")
        (image,) = self.run("image_encoder.onnx", pixel_values=pixels.float().cpu().numpy())
        return torch.from_numpy(image)

    def mask(self, n_img: int, n_txt: int, device=None) -> torch.Tensor:
        """The (L, L) mask the graphs were exported with (GIT.mask)."""
        return git_mask(n_img, n_txt, device=device)

    def __call__(self, *args, **kwargs):
        raise ValueError("an ONNX export decodes over its KV cache only; the full forward (use_cache=False) "
                         "is not exported")

    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, **kwargs):
        """As GIT.generate (generation/generate.py), over the exported graphs. No compile: the graphs are built."""
        from ..generation.generate import generate

        if kwargs.get("compile"):
            raise ValueError("compile=True compiles the torch decode step; an ONNX export runs onnxruntime's")
        return generate(self, pixel_values, input_ids, attention_mask, **kwargs)
