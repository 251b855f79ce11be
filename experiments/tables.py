"""The paper's study (Tables 3 and 5-12): every row as printed, its published values, its config.

A row's config is ``experiments/configs/table{N}/{row.key}.toml`` and its runs go to
``WORKDIR/table{N}/{row.key}/`` (see experiments/run.py). Published values are kept as the
paper prints them ("0.805 ± 0.004", "-" where it gives none), so the output tables quote the
paper exactly.

What a column means for our runs (scores of a fold's best weights on its held-out fold; the
output's Folds column says whether those tiles were a random fold, a spatial fold or the
official split):
miou, iou_fg, iou_bg, f1, precision, recall as in jaxswin.metrics; dice = f1 (the two are the
same number for a binary mask); epoch = the best epoch; delta_miou = mIoU minus the table's
first row's (Table 11: against no TTA); seconds = time to predict the held-out fold with the
row's TTA, compilation excluded; alpha_rgb = sigma(alpha), the late-fusion blend's RGB weight.

Rows the paper marks † are single-fold results on the challenge's validation split: the runner
trains them on the dataset's own train/val split (``--fold official``) when it has one.
"""

from __future__ import annotations

from dataclasses import dataclass

from jaxswin.errors import UserError

NOT_REPRODUCED_EXTERNAL = "not reproduced (external model)"


@dataclass(frozen=True)
class Column:
    key: str  # the name of our score (see the module docstring)
    header: str  # as the paper prints it


@dataclass(frozen=True)
class Row:
    key: str  # config stem and run folder
    label: str  # as the paper prints it
    paper: tuple[str, ...]  # one published value per column, as printed
    note: str = ""
    reproduced: bool = True  # False: the row keeps the paper's values and its note says why

    @property
    def on_validation_split(self) -> bool:
        """Marked † and single-fold: the paper scored it on the competition's validation split."""
        return "†" in self.label and self.note != FIVE_FOLD


@dataclass(frozen=True)
class Table:
    number: int
    title: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    # The rows differ only in how one trained model predicts (Table 11's TTA strategies): the
    # model is trained once, from the first row's config, and every row evaluates it.
    shared_run: bool = False

    def config_name(self, row: Row) -> str:
        return f"table{self.number}/{row.key}"

    def run_key(self, row: Row) -> str:
        """The run folder (under WORKDIR/table{N}/) whose model the row scores."""
        return self.rows[0].key if self.shared_run else row.key

    def row(self, key: str) -> Row:
        for row in self.rows:
            if row.key == key:
                return row
        keys = ", ".join(r.key for r in self.rows)
        raise UserError(f"--rows {key}: Table {self.number} has no row '{key}' (rows: {keys})")


MIOU, F1, DICE = Column("miou", "mIoU"), Column("f1", "F1"), Column("dice", "Dice")
VAL_MIOU, VAL_F1, VAL_DICE = Column("miou", "Val mIoU"), Column("f1", "Val F1"), Column("dice", "Val Dice")

LEADERBOARD = "paper: CodaBench development phase; ours: held-out fold (kind in Folds)"
FIVE_FOLD = "paper: 5-fold CV (run --folds 0,1,2,3,4 to compare)"

TABLES: dict[int, Table] = {
    t.number: t
    for t in (
        Table(2, "Official CodaBench evaluation for the final submission", (
            MIOU, Column("iou_fg", "IoU_fg"), Column("iou_bg", "IoU_bg"), F1,
            Column("precision", "Prec."), Column("recall", "Recall"),
        ), (
            Row("development", "Development",
                ("0.867", "0.827", "0.907", "0.905", "0.900", "0.911"),
                "paper: 5-fold x 4-view ensemble on the CodaBench development phase; "
                "ours: held-out fold, one model"),
            Row("test", "Test", ("0.783", "0.677", "0.890", "0.800", "0.760", "0.860"),
                "not reproduced (the challenge's hidden test set)", reproduced=False),
        )),
        Table(3, "Progressive improvement across experimental configurations", (MIOU, F1), (
            Row("swint_fpn_rgb_dem", "SwinTiny + FPN, RGB + DEM (4 channels) †", ("0.672", "-")),
            Row("swint_fpn_all7", "SwinTiny + FPN, all 7 channels †", ("0.743", "0.821")),
            Row("swint_fpn_bce_w_dice", "SwinTiny + FPN, class-weighted BCE + Dice †",
                ("0.762", "0.840")),
            Row("mmsformer", "MMSFormer (B2+B1 encoders), all 7 channels †", ("0.716", "-"),
                NOT_REPRODUCED_EXTERNAL, reproduced=False),
            Row("dual_t_fpn_gated", "DualSwinTiny + FPN, gated cross-modal fusion †",
                ("0.793", "0.848")),
            Row("swint_fpn_leaderboard", "SwinTiny + FPN (CodaBench development leaderboard)",
                ("0.837", "0.884"), LEADERBOARD),
            Row("dual_s_unetpp_weighted_sum",
                "DualSwinV2-S + UNet++, weighted-sum cross-modal fusion †", ("0.824", "0.868")),
            Row("dual_s_fpn_concat",
                "DualSwinV2-S + FPN, concatenation-based cross-modal fusion †", ("0.836", "0.878")),
            Row("dual_s_hybrid", "★ DualSwinV2-S + Hybrid Decoder (single-fold) †",
                ("0.828", "0.877")),
            Row("dual_s_hybrid_attention",
                "★ DualSwinV2-S + Hybrid Decoder + channel attention (5-fold CV) †",
                ("0.805 ± 0.004", "0.872 ± 0.004"), FIVE_FOLD),
            Row("dual_s_unetpp", "DualSwinV2-S + UNet++, 5-fold ensemble (development)",
                ("0.867", "0.905"),
                "paper: 5-fold x 4-view ensemble on the CodaBench development phase; "
                "ours: held-out fold (kind in Folds), one model"),
            Row("dual_s_unetpp_test", "DualSwinV2-S + UNet++, 5-fold ensemble (test)",
                ("0.783", "0.800"), "not reproduced (the challenge's hidden test set)",
                reproduced=False),
        )),
        Table(5, "Ablation study on modality combinations", (VAL_MIOU, VAL_DICE), (
            Row("rgb_dem", "RGB + DEM (4 channels)", ("0.672", "0.758")),
            Row("rgb_thermal", "RGB + Thermal (4 channels)", ("0.661", "0.750")),
            Row("rgb_dem_slope", "RGB + DEM + Slope (5 channels)", ("0.721", "0.798")),
            Row("rgb_dem_thermal", "RGB + DEM + Thermal (5 channels)", ("0.691", "0.778")),
            Row("all7", "All 7 channels (7 channels)", ("0.743", "0.821")),
        )),
        Table(6, "Ablation study on the loss function", (VAL_MIOU, VAL_DICE), (
            Row("l1", "L1 BCE", ("0.728", "0.806")),
            Row("l2", "L2 Dice", ("0.752", "0.833")),
            Row("l3", "L3 BCE + Dice", ("0.758", "0.833")),
            Row("l4", "L4 BCE(w+) + Dice", ("0.762", "0.840")),
            Row("l5", "L5 Focal", ("0.744", "0.818")),
            Row("l6", "L6 Focal + Dice", ("0.748", "0.827")),
            Row("l7", "L7 Soft-IoU", ("0.779", "0.851")),
            Row("l8", "L8 BCE + Soft-IoU", ("0.751", "0.827")),
            Row("l9", "L9 Tversky (α = 0.3)", ("0.747", "0.827")),
            Row("l10", "L10 Dice + Boundary Dice", ("0.704", "0.790")),
            Row("l11", "L11 Dice + Lovasz", ("0.757", "0.829")),
            Row("l12", "L12 BCE(w+)+Dice+Lovasz", ("0.760", "0.846")),
        )),
        Table(7, "Ablation study on the decoder choice (weighted-sum fusion)", (VAL_MIOU, VAL_F1), (
            Row("fpn", "FPN", ("0.800", "0.849")),
            Row("upernet", "UPerNet", ("0.818", "0.865")),
            Row("segformer", "SegFormer MLP", ("0.806", "0.857")),
            Row("deeplabv3plus", "DeepLabV3+", ("0.801", "0.846")),
            Row("unetpp", "UNet++", ("0.824", "0.868")),
        )),
        Table(8, "Ablation study on cross-modal fusion strategy", (MIOU, F1), (
            Row("fpn_concat", "FPN, concatenation-based", ("0.836", "0.878")),
            Row("upernet_concat", "UPerNet, concatenation-based", ("0.822", "0.867")),
            Row("unetpp_concat", "UNet++, concatenation-based", ("0.814", "0.857")),
            Row("unetpp_weighted_sum", "UNet++, weighted-sum", ("0.803", "0.850")),
            Row("upernet_weighted_sum", "UPerNet, weighted-sum", ("0.824", "0.868")),
        )),
        Table(9, "Hybrid decoder vs. plain UNet++", (
            MIOU, Column("iou_fg", "IoU_fg"), Column("iou_bg", "IoU_bg"),
            Column("precision", "Prec."), Column("recall", "Recall"), F1,
        ), (
            Row("unetpp", "UNet++", ("0.836", "0.776", "0.895", "0.895", "0.850", "0.872")),
            Row("hybrid", "Hybrid", ("0.828", "0.769", "0.887", "0.856", "0.899", "0.877")),
        )),
        Table(10, "Ablation study on channel attention (hybrid decoder)",
              (Column("miou", "CV mIoU"), Column("f1", "CV F1")), (
            Row("e10a", "E10-a: IA -, IE ECA, DO -, ECA-gated fusion",
                ("0.806 ± 0.009", "0.873 ± 0.009"), FIVE_FOLD),
            Row("e10b", "E10-b: IA -, IE ECA, DO -, CBAM-gated fusion",
                ("0.805 ± 0.008", "0.872 ± 0.009"), FIVE_FOLD),
            Row("e11", "E11: IA ECA, IE ECA, DO CBAM, CBAM-gated fusion",
                ("0.802 ± 0.011", "0.871 ± 0.010"), FIVE_FOLD),
            Row("e12", "E12: IA ECA, IE ECA, DO ECA, ECA-gated fusion",
                ("0.805 ± 0.008", "0.872 ± 0.008"), FIVE_FOLD),
            Row("e13", "E13: IA ECA, IE ECA, DO SE, SE-gated fusion",
                ("0.803 ± 0.006", "0.871 ± 0.007"), FIVE_FOLD),
            Row("e9", "E9: IA ECA, IE SE, DO CBAM, ECA-gated fusion",
                ("0.805 ± 0.008", "0.872 ± 0.008"), FIVE_FOLD),
        )),
        Table(11, "Ablation study on test-time augmentation (one trained model)", (
            VAL_MIOU, Column("delta_miou", "ΔmIoU"), Column("seconds", "Inf. time"),
        ), (
            Row("none", "No TTA", ("0.8278", "+0.0000", "0.9 s")),
            Row("hflip", "Horizontal flip", ("0.8272", "-0.0006", "1.0 s")),
            Row("vflip", "Vertical flip", ("0.8276", "-0.0002", "1.0 s")),
            Row("flip2", "H-flip + V-flip (2-view)", ("0.8283", "+0.0005", "1.2 s")),
            Row("rot4", "4-view (90° rotations)", ("0.8271", "-0.0007", "1.2 s")),
            Row("d4", "8-view (D4 symmetry group)", ("0.8231", "-0.0047", "1.5 s")),
        ), shared_run=True),
        Table(12, "EMA vs. standard training",
              (VAL_MIOU, VAL_F1, Column("epoch", "Best epoch")), (
            Row("ema", "EMA (γ = 0.995)", ("0.8278", "0.8692", "28")),
            Row("no_ema", "Standard (no EMA)", ("0.8178", "0.8611", "12")),
        )),
        # §4.4's late-fusion ablation, which the paper reports in its text, not in a table.
        Table(13, "Late fusion vs. mid fusion (§4.4 text, no table in the paper)",
              (Column("miou", "CV mIoU"), Column("alpha_rgb", "σ(α) RGB weight")), (
            Row("mid", "Mid fusion (concatenation, the paper's model)", ("0.8421 ± 0.007", "-"),
                FIVE_FOLD),
            Row("late", "Late fusion, learned α-blend of two encoder-decoders",
                ("0.8415 ± 0.008", "≈ 0.48"), FIVE_FOLD),
        )),
    )
}


def get(number: int) -> Table:
    if number not in TABLES:
        raise UserError(f"--table {number}: choose one of {', '.join(map(str, TABLES))}")
    return TABLES[number]
