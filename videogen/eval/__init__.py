"""``videogen eval``: ground-truth quality of a model of the shapes world, measured on its renders.

An evaluation (:mod:`~videogen.eval.schema`) renders every suite x prompt x seed
(:mod:`~videogen.eval.plan`, :mod:`~videogen.eval.runner`), scores each video against its prompt
with the world's own measurements (:mod:`~videogen.eval.scoring`, built on
:func:`videogen.data.measure.score_video`) and reports per-suite rates and means
(:mod:`~videogen.eval.report`). Beyond a caption: an object's track against a requested motion
(:mod:`~videogen.eval.motion`), and frames against an image or another render
(:mod:`~videogen.eval.fidelity`), seams at clip boundaries and where a prompt schedule switches
(:mod:`~videogen.eval.seams`). docs/quality.md defines every figure.
"""

from videogen.eval.fidelity import identity_rate, psnr, ssim, vae_round_trip
from videogen.eval.motion import MotionErrors, motion_errors, requested_motion, requested_track, track_continuity
from videogen.eval.plan import REPEAT_SEED_STRIDE, RenderPlan, plan_renders
from videogen.eval.prompts import single_object_prompts
from videogen.eval.report import format_table, report_table, write_report
from videogen.eval.runner import EvalReport, run_eval
from videogen.eval.schema import EvalJob, ScoringSection, SheetSection, SuiteSection, eval_problems, load_eval_job
from videogen.eval.scoring import SuiteSummary, VideoRow, score_row, summarize, summarize_suites
from videogen.eval.seams import BoundaryJumps, boundary_jumps, switch_frame

__all__ = [
    "REPEAT_SEED_STRIDE",
    "BoundaryJumps",
    "EvalJob",
    "EvalReport",
    "MotionErrors",
    "RenderPlan",
    "ScoringSection",
    "SheetSection",
    "SuiteSection",
    "SuiteSummary",
    "VideoRow",
    "boundary_jumps",
    "eval_problems",
    "format_table",
    "identity_rate",
    "load_eval_job",
    "motion_errors",
    "plan_renders",
    "psnr",
    "report_table",
    "requested_motion",
    "requested_track",
    "run_eval",
    "score_row",
    "single_object_prompts",
    "ssim",
    "summarize",
    "summarize_suites",
    "switch_frame",
    "track_continuity",
    "vae_round_trip",
    "write_report",
]
