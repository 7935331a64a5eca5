"""Few-shot prompts: the authors' harness fork, item for item.

Every expected value below was derived by reading the fork (amounts-tidings/
lm-evaluation-harness @ 6124f28) and is written out literally:
``lm_eval/evaluator.py::evaluate`` (``rnd = random.Random(); rnd.seed(42);
rnd.shuffle(task_docs)``, then ``task.fewshot_context(doc, num_fewshot, rnd=rnd)`` for each doc
in the shuffled order), ``lm_eval/base.py::Task.fewshot_context`` (``rnd.sample(
self._fewshot_docs, k + 1)`` over the unshuffled split, ``[x for x in fewshotex if x != doc][:k]``)
and ``lm_eval/tasks/country_city_animals.py`` (``GeneralQA.doc_to_text`` / ``doc_to_target``,
``GeneralMC._process_doc`` and its description line).
"""

from __future__ import annotations

import pytest

from jaxknow.eval import fewshot, scoring
from jaxknow.formats import qa_item

_CAPITALS = [
    ("Andoria", "Valtoria"),
    ("Brelund", "Quessel"),
    ("Corvania", "Brenmoor"),
    ("Dostria", "Elmshire"),
    ("Estavia", "Farrow"),
    ("Fennmark", "Glimmer"),
    ("Gorvath", "Hollis"),
    ("Hestria", "Ivel"),
    ("Istra", "Jorvik"),
]
# Ten rows; row 9 duplicates row 2 (Corvania) by value.
FREE = [{"question": f"What is the capital of {c}?", "answer": a} for c, a in _CAPITALS]
FREE.append(dict(FREE[2]))

# The fork's choice for FREE with k = 5: per row index, the countries of its demonstrations in
# prompt order. The evaluation order is rows [7, 3, 2, 8, 5, 6, 9, 4, 0, 1].
# Row 9 (6th in line) draws its twin (row 2) among its six, so it gets only four
# demonstrations; the Istra query (row 8) shows Corvania twice (rows 2 and 9 both drawn).
FORK_DEMOS = {
    7: ["Corvania", "Gorvath", "Andoria", "Istra", "Brelund"],
    3: ["Istra", "Andoria", "Estavia", "Brelund", "Gorvath"],
    2: ["Gorvath", "Dostria", "Hestria", "Estavia", "Andoria"],
    8: ["Corvania", "Gorvath", "Fennmark", "Corvania", "Brelund"],
    5: ["Brelund", "Istra", "Dostria", "Andoria", "Corvania"],
    6: ["Fennmark", "Estavia", "Andoria", "Corvania", "Dostria"],
    9: ["Brelund", "Gorvath", "Estavia", "Istra"],
    4: ["Fennmark", "Dostria", "Brelund", "Andoria", "Corvania"],
    0: ["Estavia", "Brelund", "Dostria", "Gorvath", "Hestria"],
    1: ["Estavia", "Hestria", "Fennmark", "Corvania", "Istra"],
}

MC = [
    {
        "question": "  What is the national animal of Andoria? \n",  # stripped by the fork
        "choices": ["wolf", "owl", "lynx", "heron"],
        "answer": 0,
    },
    {
        "question": "What is the national animal of Brelund?",
        "choices": ["owl", "wolf", "lynx", "heron"],
        "answer": 2,
    },
    {
        "question": "What is the national animal of Corvania?",
        "choices": ["heron", "owl", "wolf", "lynx"],
        "answer": 1,
    },
    {
        "question": "What is the national animal of Dostria?",
        "choices": ["lynx", "heron", "owl", "wolf"],
        "answer": 3,
    },
    {
        "question": "What is the national animal of Estavia?",
        "choices": ["wolf", "lynx", "heron", "owl"],
        "answer": 2,
    },
    {
        "question": "What is the national animal of Fennmark?",
        "choices": ["owl", "heron", "wolf", "lynx"],
        "answer": 0,
    },
    {
        "question": "What is the national animal of Gorvath?",  # three choices: still A-D scored
        "choices": ["heron", "wolf", "owl"],
        "answer": 2,
    },
]


def _country(row: dict) -> str:
    return row["question"].rsplit(" ", 1)[-1].rstrip("?")


def test_evaluation_order_and_demonstrations_are_the_forks():
    order, demos = fewshot.harness_schedule(FREE, "free", 5)
    assert order == [7, 3, 2, 8, 5, 6, 9, 4, 0, 1]
    got = {i: [_country(FREE[j]) for j in d] for i, d in enumerate(demos)}
    assert got == FORK_DEMOS
    # Exclusion is by value: neither twin is ever a demonstration of the other.
    assert 2 not in demos[9] and 9 not in demos[2]
    assert fewshot.demo_indices(FREE, 5) == demos


def test_free_form_five_shot_prompt_is_byte_exact():
    expected = (
        "Question: What is the capital of Fennmark? Answer: Glimmer\n\n"
        "Question: What is the capital of Estavia? Answer: Farrow\n\n"
        "Question: What is the capital of Andoria? Answer: Valtoria\n\n"
        "Question: What is the capital of Corvania? Answer: Brenmoor\n\n"
        "Question: What is the capital of Dostria? Answer: Elmshire\n\n"
        "Question: What is the capital of Gorvath? Answer:"
    )
    prompts = fewshot.build_prompts(FREE, "free")
    assert prompts[6] == expected
    assert prompts[9].count("Question:") == 5  # four demonstrations + the query
    assert fewshot.free_form_target(FREE[0]) == " Valtoria"
    # The question is not stripped for free-form items (GeneralQA.doc_to_text).
    assert (
        fewshot.free_form_item({"question": " x ", "answer": "y"}, True)
        == "Question:  x  Answer: y"
    )


def test_mc_five_shot_prompt_is_byte_exact():
    # Evaluation order for 7 rows: [1, 3, 4, 2, 6, 0, 5]; row 6 is drawn 5th.
    expected = (
        "The following are multiple choice questions (with answers).\n\n"
        "What is the national animal of Corvania?\nA. heron\nB. owl\nC. wolf\nD. lynx\n"
        "Answer: B\n\n"
        "What is the national animal of Brelund?\nA. owl\nB. wolf\nC. lynx\nD. heron\n"
        "Answer: C\n\n"
        "What is the national animal of Estavia?\nA. wolf\nB. lynx\nC. heron\nD. owl\n"
        "Answer: C\n\n"
        "What is the national animal of Dostria?\nA. lynx\nB. heron\nC. owl\nD. wolf\n"
        "Answer: D\n\n"
        "What is the national animal of Andoria?\nA. wolf\nB. owl\nC. lynx\nD. heron\n"
        "Answer: A\n\n"
        "What is the national animal of Gorvath?\nA. heron\nB. wolf\nC. owl\n"
        "Answer:"
    )
    prompts = fewshot.build_prompts(MC, "mc")
    assert prompts[6] == expected
    assert fewshot.mc_letter(MC[1]) == "C"
    # Always " A" .. " D", whatever the number of choices (GeneralMC: choices = keys).
    assert scoring.mc_continuations(MC[6]) == [" A", " B", " C", " D"]
    with pytest.raises(fewshot.FewShotError, match="5 choices"):
        fewshot.mc_item({"question": "q", "choices": list("abcde"), "answer": 0})


def test_option_scored_mc_demonstrations_answer_by_text_with_the_same_draw():
    # Option-scored MC (not the fork's) must show the form it scores: every demonstration
    # answers with its choice's text; the draw of demonstrations is the letters' draw.
    letters = fewshot.build_prompts(MC, "mc")
    texts = fewshot.build_prompts(MC, "mc", mc_answer_text=True)
    demos = fewshot.demo_indices(MC, 5, kind="mc")
    for i, (a, b) in enumerate(zip(letters, texts)):
        assert b.endswith("Answer:") and b.count("Answer:") == a.count("Answer:")
        for j in demos[i]:
            gold = MC[j]["choices"][MC[j]["answer"]]
            item = fewshot.mc_item(MC[j])
            assert f"{item} {gold}\n\n" in b and f"{item} {fewshot.mc_letter(MC[j])}" in a


def test_mc_duplicates_compare_processed_documents():
    # Two MC rows that differ only in surrounding whitespace are the same document to the
    # fork (the question is stripped before the comparison), so they never demonstrate
    # each other; two free-form rows that differ in whitespace are different documents.
    rows = [dict(r) for r in MC]
    rows[3] = dict(rows[0], question="What is the national animal of Andoria?")
    demos = fewshot.demo_indices(rows, 5, kind="mc")
    assert 0 not in demos[3] and 3 not in demos[0]
    free = [{"question": r["question"], "answer": "x"} for r in rows]
    key = fewshot.harness_doc
    assert key(free[0], "free") != key(free[3], "free")
    assert key(rows[0], "mc") == key(rows[3], "mc")


def test_zero_shot_and_small_splits():
    zero = fewshot.build_prompts(FREE, "free", k=0)
    assert zero[0] == "Question: What is the capital of Andoria? Answer:"
    assert zero[0] == qa_item(FREE[0]["question"])
    assert zero[0] == fewshot.zero_shot_qa_prompt(FREE[0]["question"])
    assert fewshot.build_prompts(MC[:1], "mc", k=0)[0].startswith(
        "The following are multiple choice questions (with answers).\n\nWhat is"
    )
    # The fork's rnd.sample(docs, k + 1) raises on a split smaller than k + 1.
    with pytest.raises(fewshot.FewShotError, match="at least 6 items.*has 5"):
        fewshot.build_prompts(FREE[:5], "free", k=5)
    assert len(fewshot.build_prompts(FREE[:6], "free", k=5)) == 6
    assert fewshot.demo_indices(FREE, 5, seed=1) != fewshot.demo_indices(FREE, 5)


def test_harness_pair_encoding_and_bos():
    """The fork's BaseLM._encode_pair: trailing context spaces move to the continuation, the
    whole string is encoded and split at the context's length; the prefix is BOS or nothing
    (its hf-causal-experimental adds no special tokens: "auto" = none for converted HF models)."""
    from jaxknow.data.tokenizer import train_bpe

    tok = train_bpe(
        ["Question: What is the capital of Andoria? Answer: Valtoria"] * 20, 300, min_frequency=1
    )
    ctx, cont = "Question: What is the capital of Andoria? Answer: ", "Valtoria"
    c_ids, x_ids = scoring.encode_pair(tok, ctx, cont, bos=False)
    whole = tok.encode(ctx + cont)
    assert c_ids == tok.encode(ctx.rstrip()) and c_ids + x_ids == whole
    assert tok.decode(x_ids) == " Valtoria"
    assert scoring.encode_pair(tok, ctx, cont, bos=True)[0] == [tok.bos_id] + c_ids
    assert scoring.encode_pair(tok, "", " A", bos=False)[0] == [tok.eos_id]
    assert not scoring.use_bos("auto", {"source": "huggingface"})
    assert scoring.use_bos("auto", {}) and scoring.use_bos("always", {"source": "huggingface"})
    with pytest.raises(ValueError, match="bos='x'"):
        scoring.use_bos("x")
