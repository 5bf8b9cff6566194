"""Model packages (MONAI bundle layout) — write, verify, read: plain file I/O.

::

    models/<name>/
      configs/metadata.json   bundle fields + ours (hash, preprocessing, network, training, ...)
      models/model.safetensors
      docs/README.md          model card (+ froc.png, roc.png)
      LICENSE

The network is always built by our own code from ``metadata["network"]``; bundle configs
are never executed.  :func:`verify` checks the sha256 of the weights against the metadata
and refuses a mismatch; building a detector or an engine from a verified package is
:mod:`mammotriage.model.infer`'s (:meth:`~mammotriage.model.infer.Engine.from_package`),
so of the model modules this one imports only the pure scoring rule it records.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector

    from mammotriage.model.network import NetworkConfig
    from mammotriage.model.preprocess import PreprocessParams
    from mammotriage.model.twostage import SecondLook

from mammotriage.clock import utc_now
from mammotriage.digest import sha256_file

METADATA = Path("configs") / "metadata.json"
WEIGHTS = Path("models") / "model.safetensors"
#: The package layout (files, metadata keys, tensor names and dtypes). Two installations
#: exchange weights (a federation) only when theirs is the same; raise it on any change.
FORMAT_VERSION = 1
INTENDED_USE = "research demonstration, not for clinical use"
#: Where shipped packages live: <repo>/models (next to app/).
REPO_MODELS = Path(__file__).resolve().parents[3] / "models"
DEFAULT_MODEL_NAME = "mammotriage-detector"


class ModelPackageError(RuntimeError):
    """A model package is missing, malformed, or fails its integrity check."""


def default_model_dir() -> Path:
    """``$MAMMOTRIAGE_MODEL``, else ``<repo>/models/mammotriage-detector``."""
    env = os.environ.get("MAMMOTRIAGE_MODEL")
    return Path(env) if env else REPO_MODELS / DEFAULT_MODEL_NAME


def read_metadata(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / METADATA
    if not path.is_file():
        raise ModelPackageError(f"{model_dir}: not a model package (no {METADATA})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelPackageError(f"{path}: invalid JSON ({exc})") from exc
    except OSError as exc:
        raise ModelPackageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not isinstance(meta, dict):
        raise ModelPackageError(f"{path}: metadata is not a JSON object")
    return meta


def verify(model_dir: str | Path) -> dict[str, Any]:
    """Metadata of a package whose weights match their recorded sha256, else an error."""
    model_dir = Path(model_dir)
    meta = read_metadata(model_dir)
    name = meta.get("weights_file", str(WEIGHTS))
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ModelPackageError(f"{model_dir}: weights_file {name!r} is not a file inside the package")
    weights = model_dir / name
    if not weights.is_file():
        raise ModelPackageError(f"{model_dir}: weights file {weights.name} missing")
    expected = meta.get("weights_sha256")
    if not expected:
        raise ModelPackageError(f"{model_dir}: metadata has no weights_sha256; refusing unverified weights")
    actual = sha256_file(weights)
    if actual != expected:
        raise ModelPackageError(
            f"{weights}: sha256 mismatch (metadata {expected[:16]}..., file {actual[:16]}...): "
            "the weights were changed or corrupted; refusing to load")
    return meta


def canonicalize_safetensors(path: str | Path) -> bool:
    """Put the ``__metadata__`` entries of a safetensors header in sorted order, in place.

    safetensors writes its metadata from a Rust ``HashMap``, whose order changes from one
    process to the next: the same tensors then give different file bytes (and sha256).
    The tensor entries themselves are written in a fixed order. Returns True if the
    file changed.
    """
    path = Path(path)
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(bytes(data[8:8 + n]))
    meta = header.get("__metadata__")
    if not meta or list(meta) == sorted(meta):
        return False
    ordered = {"__metadata__": dict(sorted(meta.items())), **{k: v for k, v in header.items() if k != "__metadata__"}}
    raw = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(raw) > n:
        return False
    data[8:8 + n] = raw + b" " * (n - len(raw))
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(bytes(data))
    tmp.replace(path)
    return True


def save_package(out_dir: str | Path, detector: RetinaNetDetector, config: NetworkConfig,
                 pp: PreprocessParams, *, version: str, description: str,
                 training: dict[str, Any], hyper_parameters: dict[str, Any], seed: int, eval_metrics: dict[str, Any],
                 operating_points: dict[str, Any], parent_version: str | None = None,
                 changelog: dict[str, Any] | None = None, model_card: str = "", licence: str = "",
                 half: bool = True, extra: dict[str, Any] | None = None,
                 second_look: SecondLook | None = None) -> Path:
    """Write a package; returns its directory.  Weights: safetensors, matrices in fp16 when
    ``half`` (inference casts back to fp32), vectors in fp32.  A ``second_look``
    (:class:`~mammotriage.model.twostage.SecondLook`) is stored as arrays named
    ``second_look.*`` in the same file, so the one sha256 covers every learned part."""
    import monai
    import numpy as np
    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    (out_dir / "configs").mkdir(parents=True, exist_ok=True)
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    (out_dir / "docs").mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in detector.network.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        v = v.detach().cpu().contiguous()
        if v.is_floating_point():
            v = v.to(torch.float16 if (half and v.ndim > 1) else torch.float32)
        state[k] = v
    if second_look is not None:
        for k, v in second_look.to_arrays().items():
            state[k] = torch.from_numpy(np.ascontiguousarray(v))
    weights = out_dir / WEIGHTS
    save_file(state, str(weights), metadata={"format": "pt", "model_version": version})
    canonicalize_safetensors(weights)  # same tensors -> same bytes -> same sha256
    weights.chmod(0o644)
    digest = sha256_file(weights)
    rows, cols = pp.canvas_rows, pp.canvas_columns
    meta = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": version,
        "changelog": changelog or {version: description},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"timm": _version("timm"), "safetensors": _version("safetensors")},
        "name": "Mammo Triage lesion detector",
        "task": "2-D lesion detection (masses, calcification clusters) in screening mammograms",
        "description": description,
        "authors": "Mammo Triage",
        "copyright": "see LICENSE",
        "data_source": training.get("summary", ""),
        "data_type": "8-bit display-windowed mammogram (PNG or DICOM MG)",
        "image_classes": "one channel, intensity normalised ((x/255 - mean) / std)",
        "label_classes": {str(i): c for i, c in enumerate(config.classes)},
        "pred_classes": {str(i): c for i, c in enumerate(config.classes)},
        "eval_metrics": eval_metrics,
        "intended_use": INTENDED_USE,
        "references": [
            "Lin T-Y et al., Focal Loss for Dense Object Detection (RetinaNet), ICCV 2017",
            "Tan M, Le Q, EfficientNet, ICML 2019 (EfficientNet-Lite0 ImageNet weights, Apache-2.0)",
            "Suckling J et al., The Mammographic Image Analysis Society Digital Mammogram Database, 1994",
        ],
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MG",
                                 "num_channels": 1, "spatial_shape": [rows, cols], "dtype": "float32",
                                 "value_range": [-pp.norm_mean / pp.norm_std, (1 - pp.norm_mean) / pp.norm_std],
                                 "is_patch_data": False, "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "object", "format": "boxes (x0, y0, x1, y1) in stored-image pixels, "
                                 "labels, scores; suspicion map", "dtype": "float32",
                                 "num_channels": len(config.classes),
                                 "channel_def": {str(i): c for i, c in enumerate(config.classes)}}},
        },
        # ---- ours
        "created": utc_now(),
        "parent_version": parent_version,
        "weights_file": str(WEIGHTS),
        "weights_sha256": digest,
        "weights_dtype": "float16 matrices / float32 vectors" if half else "float32",
        "classes": list(config.classes),
        "network": config.to_json(),
        "preprocessing": {**pp.to_json(), "steps": [
            "foundation VOI window to 8-bit (DICOM) / PNG as stored",
            "breast segmentation (threshold, opening, largest component), background zeroed",
            "crop to breast + margin", "flip so the chest wall is on the left",
            "bilinear resize keeping aspect into the top-left of the canvas, zero padding",
            "x/255, (x - norm_mean) / norm_std"]},
        "training_data": training,
        "seed": seed,
        "hyper_parameters": hyper_parameters,
        "operating_points": operating_points,
        "scores": score_rule(second_look),
        **({"second_look": {**second_look.to_json(), "rule": second_look.describe()}} if second_look else {}),
        **(extra or {}),
    }
    (out_dir / METADATA).write_text(json.dumps(meta, indent=2) + "\n")
    if model_card:
        (out_dir / "docs" / "README.md").write_text(model_card)
    if licence:
        (out_dir / "LICENSE").write_text(licence)
    return out_dir


def score_rule(second_look: SecondLook | None = None) -> dict[str, str]:
    """The scoring rule in words, from the code that applies it (finding, image, breast, exam)."""
    from mammotriage.model.scoring import RULE

    if second_look is None:
        view = {"finding": "RetinaNet class probability after NMS", "image": "max finding score of the view"}
    else:
        d = second_look.describe()
        view = {"finding": d["finding"], "suppression": d["suppression"], "image": d["image"]}
    return {**view, **RULE}


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"
