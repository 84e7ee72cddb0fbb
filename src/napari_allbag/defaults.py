"""Names and defaults the command line needs before any heavy import, so `--help` starts fast.

The modules that use them (models, inference, distributed) import them from here.
"""

#: The two classes, in the project's order everywhere: index 1 is ALL, so P(ALL) = probs[..., 1].
CLASS_NAMES = ("hem", "all")

#: The paper's backbone.
DEFAULT_BACKBONE = "inception_resnet_v2"

#: Columns the predictions add to a cell table, in order.
#: p_all: the ensemble's P(ALL) under the rule in use (calibrated when the bundle has
#: temperatures); tta_spread: the std of P(ALL) over the 8 views (empty without TTA); review:
#: the cell needs a human look, review_reason: why (`inference.decision`).
PREDICTION_COLUMNS = (
    "p_all_model_a",
    "p_all_model_b",
    "p_all_combined",
    "label",
    "confidence",
    "p_all",
    "tta_spread",
    "review",
    "review_reason",
)

#: The ensemble rules (`model.rules`); "max" is the paper's.
ENSEMBLE_RULES = ("max", "mean", "agree", "combined")
#: How a label is decided: the rule's own (the paper's) or the bundle's sensitivity threshold.
DECISIONS = ("paper", "threshold")
#: The ALL sensitivity the training's threshold keeps on the validation subjects.
DEFAULT_TARGET_SENSITIVITY = 0.95

#: Seconds a training process waits for the others before it stops with an error.
DEFAULT_DIST_TIMEOUT_S = 600.0

#: Segmentation background modes: decide per image, cells on black (the paper), bright-field.
BACKGROUND_MODES = ("auto", "dark", "bright")

#: A white cell's nucleus is about one red cell in area or more (a small lymphocyte's is 6-7 um
#: across, a red cell 7.5 um): a bright-field cell whose nucleus, in red-cell areas, is smaller
#: is named for a look, not dropped (the stain caught a faint nucleus only in part, or it is a
#: platelet clump or red cells overlapping). `segmentation.feedback` warns, `inference.review`
#: flags; docs/image-kinds.md has what it flags on the real sample.
SMALL_NUCLEUS_RBC = 1.0

#: What each mode does, for help texts and the widgets.
BACKGROUND_HELP = (
    "auto (the default): decide per image from its border and histogram; dark: cells on a black "
    "background (C-NMC crops, the paper's segmentation); bright: bright-field smears and crops "
    "(purple white cells on a pale background)"
)
