"""configs/cooccurrence/smollm2_lr3_cpu.py read with multiple choice scored by each option's
text instead of the answer letters (`eval.mc_mode="options"`; the demonstrations then answer
by text too), the MC subset only, and the layer-delta ablation of the narrative model's
option-scored MC at every third k (first and last k layers reverted; S16 ran it before the
options shared their prompt's pass, at ~1 min per model). SmolLM2-135M picks the answer
letter of a listed option near chance even for real facts it knows (lab notebook S2, S16), so
letter-scored MC cannot say where anything lives; the option text's likelihood after the same
prompt can. Not the authors' scoring: the report says so. Run it in a copy of S7's workdir
(checkpoints hard-linked, other files copied, the stages' recorded data.dir pointed at the
copy) so the trained models and the letter-scored report stay as they are (notebook S16):

    cp -al runs/cs_lr3 runs/cs_lr3_mcopt && rm runs/cs_lr3_mcopt/{report.md,results.json}
    JAXKNOW_CPU_DEVICES=1 python -m launch.experiment \\
        --config=configs/cooccurrence/smollm2_lr3_mc_options_cpu.py --workdir=runs/cs_lr3_mcopt
"""

from ml_collections import ConfigDict

from configs.cooccurrence.smollm2_lr3_cpu import get_config as smollm2_lr3_cpu


def get_config() -> ConfigDict:
    c = smollm2_lr3_cpu()
    c.eval.mc_mode = "options"
    c.eval.subsets = ("multiple_choice",)
    c.eval.real_facts_subsets = ("multiple_choice",)
    c.ablation.subsets = ("multiple_choice",)
    c.ablation.sides = ("first", "last")
    c.ablation.k_step = 3
    return c
