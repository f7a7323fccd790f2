"""One typed configuration tree, loaded from ``params.yaml``.

Every section rejects unknown keys and type changes (``StrictModel``). The resolved tree is
saved next to every checkpoint; models are rebuilt from that file, never from whatever
``params.yaml`` says today.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import Field, ValidationError

from sasan.configbase import StrictModel
from sasan.data.config import IngestConfig, PhantomConfig, PreprocessConfig, ValidateConfig
from sasan.errors import ConfigError


class ExperimentConfig(StrictModel):
    name: str = "sasan-phantom"
    seed: int = 0
    source: str = Field("mr", description="labelled domain (folder name in the data set)")
    target: str = Field("ct", description="unlabelled domain")
    mode: Literal["unpaired", "paired"] = "unpaired"


class ModelConfig(StrictModel):
    """Network sizes (METHOD.md section 2). ``num_classes`` includes background."""

    in_channels: Literal[1, 3] = 3
    num_classes: int = Field(5, ge=2)
    k: int = Field(8, ge=1, description="attention maps per domain")
    norm_hidden: int = Field(64, ge=1, description="hidden width of the SASAN norm's map encoder")
    synth_width: int = Field(32, ge=4, description="first synthesis encoder width (32-64-128)")
    attention_width: int = Field(32, ge=4, description="first attention encoder width")
    attention_bottleneck: bool = Field(True, description="A_X's extra 3x3 block at 1/16 (not in METHOD.md; "
                                       "false = the network as METHOD.md reads)")
    disc_width: int = Field(64, ge=8, description="first PatchGAN width (64-128-256-512)")
    seg_disc_width: int = Field(64, ge=8)
    disc_layers: int = Field(4, ge=1, le=4, description="stride-2 layers of the image PatchGAN (the segmentation "
                             "PatchGANs get one fewer): 4 judges 94-pixel patches, 37 % of a 256 image; "
                             "2 judges 22-pixel patches, 34 % of a 64 image")
    unet_width: int = Field(64, ge=4, description="segmenter U-Net first width (64-128-256-512-512)")
    attention: bool = Field(True, description="False = CycleGAN ablation: constant maps, no attention losses")
    feature_disc: bool = Field(False, description="feature discriminators (ablation switch)")


class LossWeights(StrictModel):
    """Generator-side loss weights (METHOD.md section 3). 0 switches a term off."""

    adversarial: float = 2.0
    seg_adversarial: float = 2.0
    cycle: float = 10.0
    identity: float = 2.5
    orthogonality: float = 1.0
    aux_seg: float = 0.1
    pseudo_seg: float = 0.1
    attention_consistency: float = 0.1
    voxel: float = 10.0
    feature_adversarial: float = 2.0
    dice_weight: float = Field(0.2, description="soft Dice weight inside seg_loss")


def _lr_schedule() -> Any:
    return Field("linear", description="constant | linear: lr constant for the first half of the steps, "
                                         "then linearly to 0 (the joint phase's schedule)")


class PretrainConfig(StrictModel):
    epochs: float = Field(2.0, ge=0.0)
    lr: float = 4e-4
    lr_schedule: Literal["constant", "linear"] = _lr_schedule()
    batch_size: int = Field(16, ge=1)


class JointConfig(StrictModel):
    epochs: int = Field(50, ge=0, description="total epochs; lr constant for the first half, then linear to 0")
    max_steps: Optional[int] = Field(None, ge=1, description="cap on iterations (CPU demo); None = full epochs")
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 2e-4
    batch_size: int = Field(2, ge=1)
    init_target_attention: Literal["source", "random"] = Field(
        "source", description="start A_t from the pre-trained A_s (METHOD.md is silent; 'source' makes A_t's "
                              "maps mean A_s's anatomy from step 0, which attention consistency assumes)")


class SegmenterConfig(StrictModel):
    epochs: float = Field(10.0, ge=0.0)
    max_steps: Optional[int] = Field(None, ge=1)
    lr: float = 4e-4
    lr_schedule: Literal["constant", "linear"] = _lr_schedule()
    batch_size: int = Field(16, ge=1)
    fake_source: bool = Field(True, description="fake-source augmentation (ablation switch)")
    augment_fake_source: bool = Field(
        False, description="augment the fake-source slices as the real source ones (train.augment); "
                           "false: the U-Net sees them as translated")


class AugmentConfig(StrictModel):
    flip: bool = True
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.75, 1.0)


class TrainConfig(StrictModel):
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    bf16: bool = Field(True, description="bf16 autocast (CUDA only)")
    channels_last: bool = Field(True, description="channels_last memory format (CUDA: every phase; CPU: the U-Nets)")
    jobs: int = Field(1, ge=1, description="CPU: variants trained side by side in this many processes")
    num_workers: int = Field(0, ge=0)
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoints")
    log_every: int = Field(10, ge=1)
    pretrain: PretrainConfig = PretrainConfig()
    joint: JointConfig = JointConfig()
    segmenter: SegmenterConfig = SegmenterConfig()
    augment: AugmentConfig = AugmentConfig()
    losses: LossWeights = LossWeights()


class EvaluateConfig(StrictModel):
    methods: tuple[str, ...] = ("no_adaptation", "cyclegan", "sasan", "upper_bound")
    assd_cap_vox: float = 50.0
    batch_size: int = Field(16, ge=1)
    translation_mask: Literal["body", "field_of_view"] = Field(
        "body", description="paired mode: the voxels the translation metrics cover: the body mask of the real "
                            "image (METHOD.md) or every voxel the model saw (a field of view inside the body, "
                            "where an intensity threshold splits tissues instead of body from air)")


class RegisterConfig(StrictModel):
    # `sasan register` (the DVC stage) registers only when true; params.yaml and the profiles
    # set false, so `dvc exp run` trials never touch the registry unless asked. Kubeflow runs
    # register always (submitting a pipeline run is the deliberate act).
    enabled: bool = True
    model_name: str = "sasan-segmenter"
    min_dice: float = Field(0.5, ge=0.0, le=1.0)
    min_ssim: float = Field(0.5, ge=-1.0, le=1.0,
                            description="paired mode: the gate's threshold on the mean SSIM of the translations")
    alias: str = "champion"


class Config(StrictModel):
    experiment: ExperimentConfig = ExperimentConfig()
    phantom: PhantomConfig = PhantomConfig()
    ingest: IngestConfig = IngestConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    preprocess: PreprocessConfig = PreprocessConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


# PyYAML follows YAML 1.1, where "1e-4" is a string; accept it as a float as users expect.
class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.\d*|\.\d+|\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A command-line value as YAML (``3e-4`` is a float, ``[1, 2]`` a list, ``null`` None)."""
    return yaml.load(text, Loader=_Loader)


def config_from_dict(data: dict[str, Any], origin: Optional[str] = "<dict>",
                     key_origins: Optional[dict[str, str]] = None) -> Config:
    """Validate a nested dict (strict: unknown keys and wrong types raise ConfigError).

    ``key_origins`` maps dotted keys that did not come from ``origin`` to where they did
    (``--set model.k=4``, ``--cases``): an error at or below such a key (or above it, for a
    misspelt section) names that origin instead, so a command-line typo is not blamed on
    ``params.yaml``."""
    try:
        return Config.model_validate_json(json.dumps(data))
    except ValidationError as err:
        errors = err.errors()
        reason, where = _describe_error(errors[0], key_origins or {}, origin)
        more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
        raise ConfigError(reason + more, where) from None


def _describe_error(error: Any, key_origins: dict[str, str], origin: Optional[str]) -> tuple[str, Optional[str]]:
    """One pydantic error -> (reason in plain words, the origin to name)."""
    loc = [str(part) for part in error["loc"]]
    # the key given on its own whose value holds the error, or under which it was misspelt
    given = next((key.split(".") for key in key_origins if _nested_in(key.split("."), loc)), None)
    key = loc if given is None else max(given, loc, key=len)
    if given is not None:
        origin = key_origins[".".join(given)]
    # the origin already names the key when it is the one given (--set KEY=VALUE, --cases)
    where = "" if key == given else ".".join(key) + ": "
    kind, msg = error["type"], str(error["msg"])
    if kind == "extra_forbidden":
        guess = difflib.get_close_matches(".".join(key), _setting_names(), n=1, cutoff=0.6)
        return where + "unknown setting" + (f"; did you mean {guess[0]}?" if guess else ""), origin
    if kind in ("tuple_type", "list_type"):
        msg = "should be a list, e.g. [a, b]"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        msg = "should be a section of settings (key: value)"
    elif kind in ("too_long", "too_short"):
        ctx = error.get("ctx") or {}
        most = kind == "too_long"
        msg = f"should have at {'most' if most else 'least'} {ctx.get('max_length' if most else 'min_length')} value(s)"
    elif kind == "missing":
        return where + "a required value is missing", origin
    elif kind == "value_error":
        return where + msg.removeprefix("Value error, "), origin
    msg = msg.removeprefix("Input ")
    shown = json.dumps(error.get("input"), ensure_ascii=False)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"{where}{msg}, got {shown}", origin


def _nested_in(a: list[str], b: list[str]) -> bool:
    """Whether one dotted key lies at or below the other."""
    return a[:len(b)] == b or b[:len(a)] == a


def _setting_names(model: type[StrictModel] = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the tree, sections included (``train``, ``train.joint.max_steps``)."""
    names = []
    for name, field in model.model_fields.items():
        dotted = prefix + (field.alias or name)
        names.append(dotted)
        if isinstance(field.annotation, type) and issubclass(field.annotation, StrictModel):
            names += _setting_names(field.annotation, dotted + ".")
    return names


def load_config(path: str | Path, overrides: Optional[dict[str, Any]] = None,
                key_origins: Optional[dict[str, str]] = None) -> Config:
    """Load ``params.yaml`` (a missing section takes its defaults) and apply dotted overrides.

    An error in an override names where it came from: ``key_origins[key]`` (``--set
    KEY=VALUE``), else ``override KEY``; an error in the file's own keys names the file."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_Loader) or {}
    except FileNotFoundError:
        raise ConfigError("configuration file not found", path) from None
    except OSError as err:  # a folder, no permission
        raise ConfigError(f"cannot read: {err.strerror or err}", path) from None
    except UnicodeDecodeError:
        raise ConfigError("not a text (YAML) file", path) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML: {err}", path) from None
    if not isinstance(data, dict):
        raise ConfigError("top level must be a mapping", path)
    for dotted, value in (overrides or {}).items():
        try:
            set_dotted(data, dotted, value)
        except ConfigError as err:  # an override that the file's values do not allow
            raise ConfigError(err.reason, path) from None
    origins = {key: f"override {key}" for key in overrides or {}} | (key_origins or {})
    return config_from_dict(data, str(path), origins)


# the Kubeflow pipeline's direction and source parameters -> the keys they set when non-empty
PIPELINE_FIELDS = {"source": "experiment.source", "target": "experiment.target", "experiment": "experiment.name",
                   "data_source": "ingest.source", "layout": "ingest.layout"}


def config_from_pipeline(params: str | Path, overrides: Optional[dict[str, Any]] = None, **fields: str) -> Config:
    """The configuration a Kubeflow run resolves: its configure step, and ``sasan pipeline
    submit`` checking a ``--params-file`` before anything is submitted.

    ``params``: a YAML file (a ``Path``, or the path of a profile inside the image), a YAML
    text, or empty (the built-in defaults, whose phantom ``data_source`` is generated in the
    ingest step); ``overrides``: dotted keys -> values; non-empty ``fields``
    (:data:`PIPELINE_FIELDS`) override ``experiment.*`` and ``ingest.*``."""
    import tempfile

    def exact(value: Any) -> Any:
        # KFP carries dict parameters as protobuf Structs, where every number is a double:
        # 3 arrives as 3.0, which an int field rejects (a float field accepts an int)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, list):
            return [exact(v) for v in value]
        return {k: exact(v) for k, v in value.items()} if isinstance(value, dict) else value

    extra = {key: exact(value) for key, value in (overrides or {}).items()}
    if not params and not fields.get("data_source") and "ingest.source" not in extra:
        fields = {**fields, "data_source": "phantom"}
    extra.update({PIPELINE_FIELDS[name]: value for name, value in fields.items() if value})
    if isinstance(params, Path) or (params and "\n" not in params and Path(params).is_file()):
        return load_config(params, extra)
    with tempfile.TemporaryDirectory() as tmp:
        text_file = Path(tmp) / "params.yaml"
        text_file.write_text(params or "{}")
        return load_config(text_file, extra)


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for depth, key in enumerate(parents):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            section = ".".join(parents[:depth + 1])
            raise ConfigError(f"cannot set {dotted}: {section} is {node!r}, not a section")
    node[leaf] = value


def save_config(cfg: Config, path: str | Path) -> None:
    from sasan.atomic import write_text

    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
