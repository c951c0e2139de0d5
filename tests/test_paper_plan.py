"""bench/paper_plan.py: the FLOP counts behind docs/reproducing.md#the-plan, against hand-worked values,
and the docs' tables equal to what the script prints (no hand-typed numbers)."""
import contextlib
import io
import os

from test_training_helpers import ROOT
from tree_scripts import load_script

paper_plan = load_script("bench/paper_plan.py")


def test_bert_base_forward_flops_equal_the_hand_count():
    # bert-base (L 12, H 768, FFN 3072), B 32 x S 128 = T 4096 tokens, 2 labels; 2 m n k per product:
    #   encoder matrices per layer: 4 H^2 + 2 H 4H = 2,359,296 + 4,718,592 = 7,077,888; x 12 = 84,934,656
    #   linear layers: 2 x 84,934,656 x 4096                     = 695,784,701,952
    #   QK^T and AV:   4 x L x S x H x T = 4 x 12 x 128 x 768 x 4096 = 19,327,352,832
    #   pooler:        2 x B x H x H = 2 x 32 x 768 x 768          =     37,748,736
    #   head:          2 x B x H x 2                               =         98,304
    #   total                                                      = 715,149,901,824
    flops, params = paper_plan.forward_flops("none", (2,), 32, 128)
    assert flops == 715_149_901_824
    assert params == 109_482_240 + 768 * 2 + 2  # one BERT-base with pooler (docs/reproducing.md) + the head


def test_pals_add_their_hand_counted_flops():
    # one task's PALs per layer and token (A 204): V^E 2 H A + Q, K, V 3 x 2 A^2 + V^D 2 A H, and
    # attention over the PAL heads 4 S A: 626,688 + 249,696 + 104,448 = 980,832; x T 4096 x L 12
    base = paper_plan.forward_flops("none", (2,), 32, 128)[0]
    pals = paper_plan.forward_flops("pals", (2,), 32, 128)[0]
    assert pals - base == 980_832 * 4096 * 12 == 48_209_854_464


def test_docs_hold_the_tables_the_script_prints():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        paper_plan.main()
    with open(os.path.join(ROOT, "docs", "reproducing.md"), encoding="utf-8") as f:
        docs = f.read()
    for table in out.getvalue().strip().split("\n\n"):
        assert table in docs, table.splitlines()[0]
