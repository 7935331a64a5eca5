"""Few-shot prompts: the harness's exact format and demonstration choice."""

from __future__ import annotations

import random

from jaxknow.eval import fewshot
from jaxknow.worlds.bios import QA_PROMPT

FREE = [
    {"question": "What is the capital of Andoria?", "answer": "Valtoria"},
    {"question": "What is the capital of Brelund?", "answer": "Quessel"},
    {"question": "What is the capital of Corvania?", "answer": "Brenmoor"},
    {"question": "What is the capital of Dostria?", "answer": "Elmshire"},
    {"question": "What is the capital of Estavia?", "answer": "Farrow"},
    {"question": "What is the capital of Fennmark?", "answer": "Glimmer"},
    {"question": "What is the capital of Gorvath?", "answer": "Hollis"},
]

MC = [
    {"question": "What is the national animal of Andoria?",
     "choices": ["wolf", "owl", "lynx", "heron"], "answer": 0},
    {"question": "What is the national animal of Brelund?",
     "choices": ["owl", "wolf", "lynx", "heron"], "answer": 2},
    {"question": "What is the national animal of Corvania?",
     "choices": ["heron", "owl", "wolf", "lynx"], "answer": 1},
    {"question": "What is the national animal of Dostria?",
     "choices": ["lynx", "heron", "owl", "wolf"], "answer": 3},
    {"question": "What is the national animal of Estavia?",
     "choices": ["wolf", "lynx", "heron", "owl"], "answer": 2},
    {"question": "What is the national animal of Fennmark?",
     "choices": ["owl", "heron", "wolf", "lynx"], "answer": 0},
    {"question": "What is the national animal of Gorvath?",
     "choices": ["heron", "wolf", "owl", "lynx"], "answer": 3},
]


def test_demo_indices_follow_the_authors_rule():
    rng = random.Random(42)
    expected = []
    for i in range(len(FREE)):
        sample = rng.sample(range(len(FREE)), 6)
        expected.append([j for j in sample if j != i][:5])
    got = fewshot.demo_indices(len(FREE))
    assert got == expected
    # Random(42) over 7 items: query 0 gets [5, 6, 2, 4, 3], query 1 gets [5, 0, 4, 2, 6].
    assert got[0] == [5, 6, 2, 4, 3] and got[1] == [5, 0, 4, 2, 6]
    assert all(i not in d and len(d) == 5 for i, d in enumerate(got))


def test_free_form_five_shot_prompt_is_byte_exact():
    expected = (
        "Question: What is the capital of Fennmark? Answer: Glimmer\n\n"
        "Question: What is the capital of Gorvath? Answer: Hollis\n\n"
        "Question: What is the capital of Corvania? Answer: Brenmoor\n\n"
        "Question: What is the capital of Estavia? Answer: Farrow\n\n"
        "Question: What is the capital of Dostria? Answer: Elmshire\n\n"
        "Question: What is the capital of Andoria? Answer:"
    )
    prompts = fewshot.build_prompts(FREE, "free")
    assert prompts[0] == expected
    assert fewshot.free_form_target(FREE[0]) == " Valtoria"


def test_mc_five_shot_prompt_is_byte_exact():
    expected = (
        "The following are multiple choice questions (with answers).\n\n"
        "What is the national animal of Fennmark?\nA. owl\nB. heron\nC. wolf\nD. lynx\n"
        "Answer: A\n\n"
        "What is the national animal of Andoria?\nA. wolf\nB. owl\nC. lynx\nD. heron\n"
        "Answer: A\n\n"
        "What is the national animal of Estavia?\nA. wolf\nB. lynx\nC. heron\nD. owl\n"
        "Answer: C\n\n"
        "What is the national animal of Corvania?\nA. heron\nB. owl\nC. wolf\nD. lynx\n"
        "Answer: B\n\n"
        "What is the national animal of Gorvath?\nA. heron\nB. wolf\nC. owl\nD. lynx\n"
        "Answer: D\n\n"
        "What is the national animal of Brelund?\nA. owl\nB. wolf\nC. lynx\nD. heron\n"
        "Answer:"
    )
    prompts = fewshot.build_prompts(MC, "mc")
    assert prompts[1] == expected
    assert fewshot.mc_letter(MC[1]) == "C"


def test_zero_shot_and_small_splits():
    zero = fewshot.build_prompts(FREE, "free", k=0)
    assert zero[0] == "Question: What is the capital of Andoria? Answer:"
    assert zero[0] == QA_PROMPT.format(question=FREE[0]["question"])
    assert zero[0] == fewshot.zero_shot_qa_prompt(FREE[0]["question"])
    assert fewshot.build_prompts(MC[:1], "mc", k=0)[0].startswith(
        "The following are multiple choice questions (with answers).\n\nWhat is")
    # Fewer items than k + 1: every other item is a demonstration, never the query.
    demos = fewshot.demo_indices(3, 5)
    assert [sorted(d) for d in demos] == [[1, 2], [0, 2], [0, 1]]
    assert fewshot.demo_indices(4, 5, seed=1) == fewshot.demo_indices(4, 5, seed=1)
