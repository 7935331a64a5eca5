"""SmolLM2-135M at lr 3e-4 with referencing trained for the paper's five passes over its
1,920 rows (600 steps; configs/cooccurrence/smollm2_cpu.py cut it to one pass), beside
narrative's five passes over 360 rows (113 steps); every task evaluated 5-shot with MC read
by each option's text (`eval.mc_mode="options"`, not the authors' letters: SmolLM2 picks a
letter near chance even for real facts it knows, lab notebook S16), and the narrative model's
layer-delta ablation at every k (first and last k of the 30 layers reverted) on option-scored
MC, with its continuous reading (`multiple_choice p_true`: the mean probability of the right
option among the four) and the 95 % interval of its change from the unablated model, paired
over items. Active forgetting is off (S7-S10 measured it). Lab notebook S18. About 1.7 hours
on 2 CPU cores: the narrative half with its ablation first (about 30 minutes), the
referencing stage added by the second command (76 minutes):

    python -m launch.get_model smollm2-135m
    JAXKNOW_CPU_DEVICES=1 python -m launch.experiment \\
        --config=configs/cooccurrence/smollm2_lr3_referencing5_cpu.py --workdir=runs/cs_ref5 \\
        --config.renderings='("narrative",)'
    JAXKNOW_CPU_DEVICES=1 python -m launch.experiment \\
        --config=configs/cooccurrence/smollm2_lr3_referencing5_cpu.py --workdir=runs/cs_ref5
"""

from ml_collections import ConfigDict

from configs.cooccurrence.smollm2_lr3_mc_options_cpu import get_config as mc_options


def get_config() -> ConfigDict:
    c = mc_options()
    c.epochs_per_rendering = ConfigDict()  # every rendering the stage's 5 epochs
    c.eval.subsets = ()  # every task of the novel split
    c.eval.real_facts_subsets = ("qa", "multiple_choice")
    c.forget.enabled = False
    c.ablation.k_step = 1
    return c
