"""The bioS leakage guard: every kind of leak of a P_test question into a training source is
refused (each test injects one and asserts the guard raises); the clean world passes."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from configs.bios.tiny import get_config as bios_tiny
from jaxknow.data import build
from jaxknow.data.jsonl import read_jsonl
from jaxknow.studies.bios import study as study_lib
from jaxknow.studies.bios import world as bios
from jaxknow.studies.bios.leakage import LeakageError, check_no_leak, find_leak
from jaxknow.studies.bios.templates import QA_TEMPLATES


def _config():
    c = bios_tiny()
    c.conditions = ["single", "multi2x2+permute+fullname"]  # sets world.redraws = 2
    c.celebrity = True
    return c


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A materialised tiny study world: single, multi2x2+permute+fullname, celebrity."""
    study = study_lib.parse_study(_config())
    world = study_lib.study_world(study)
    out = tmp_path_factory.mktemp("leak") / "data"
    build.materialize(world, out, study.seed)
    return study, world, out


@pytest.fixture
def data(built, tmp_path):
    study, world, out = built
    copy = tmp_path / "data"
    shutil.copytree(out, copy)
    return study, world, copy


def _test_person(data_dir):
    row = next(r for r in read_jsonl(data_dir / "people.jsonl") if r["split"] == "test")
    return row["person"], row["name"]


def _append(path, row):
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _edit_text(path, index, extra):
    rows = read_jsonl(path)
    rows[index]["text"] += extra
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_clean_world_passes_the_leak_guard(data):
    study, world, data_dir = data
    study_lib.check_leakage(study, world, data_dir)  # no error
    sources = study_lib.training_sources(study, world)
    names = {s for v in sources.values() for s in v}
    assert {"bios_single", "bios_multi2_permute_fullname", "qa_train"} <= names
    assert {"bios_celebrity", "bios_minority"} <= names
    assert "qa_test" not in names
    assert any(k.startswith("mixed ") for k in sources)


def test_leak_p_test_qa_in_qa_train_is_refused_by_the_study(data):
    study, world, data_dir = data
    _append(data_dir / "qa_train.jsonl", read_jsonl(data_dir / "qa_test.jsonl")[0])
    with pytest.raises(LeakageError, match="'qa_train'.*P_test person"):
        study_lib.check_leakage(study, world, data_dir)


def test_leak_p_test_qa_in_qa_train_is_refused_when_the_world_is_built(tmp_path, monkeypatch):
    real = bios.qa_items

    def everyone(w, people):  # the builder's P_train QA now holds every person
        return real(w, range(w.num_people))

    monkeypatch.setattr(bios, "qa_items", everyone)
    study = study_lib.parse_study(_config())
    with pytest.raises(LeakageError, match="'qa_train'"):
        build.materialize(study_lib.study_world(study), tmp_path / "d", study.seed)


def test_leak_qa_test_fed_to_the_finetune_is_refused(data, monkeypatch):
    study, world, data_dir = data
    monkeypatch.setattr(study_lib, "QA_SOURCE", "qa_test")
    assert "qa_test" in {s for v in study_lib.training_sources(study, world).values() for s in v}
    with pytest.raises(LeakageError, match="'qa_test'"):
        study_lib.check_leakage(study, world, data_dir)


def test_leak_question_sentence_in_a_pretraining_corpus_is_refused(data):
    study, world, data_dir = data
    _, name = _test_person(data_dir)
    _edit_text(
        data_dir / "bios_single.jsonl",
        3,
        f" Question: What is the birth city of {name}? Answer: Nowhere",
    )
    with pytest.raises(LeakageError, match=f"'bios_single' row 3 .*{name}"):
        study_lib.check_leakage(study, world, data_dir)


def test_leak_in_a_redraw_is_refused_when_the_world_is_built(tmp_path, monkeypatch):
    real = bios.render_biographies
    study = study_lib.parse_study(_config())
    w, _ = study_lib.bios_world(study_lib.study_world(study), study.seed)
    name = w.people[int(w.test_ids[0])].full_name

    def leaky(world, aug, seed, people=None):
        out = real(world, aug, seed, people)
        if aug.multi > 1 and seed >= 100_003 and people is None:  # the second draw only
            out[0] = dataclasses.replace(out[0], text=out[0].text + f" Where did {name} work?")
        return out

    monkeypatch.setattr(bios, "render_biographies", leaky)
    n_first_draw = 2 * w.num_people  # multi2: draw 0 holds rows [0, 2N)
    with pytest.raises(
        LeakageError, match=f"'bios_multi2_permute_fullname' row {n_first_draw} .*{name}"
    ):
        build.materialize(study_lib.study_world(study), tmp_path / "d", study.seed)


def test_leak_into_mixed_training_qa_documents_is_refused(data):
    study, world, data_dir = data
    assert study.mixed.enabled
    _, name = _test_person(data_dir)
    train_row = read_jsonl(data_dir / "qa_train.jsonl")[0]  # a P_train person's row ...
    leak = dict(train_row, question=f"Which company did {name} work for?")  # ... asking P_test
    _append(data_dir / "qa_train.jsonl", leak)
    mixed = [v for k, v in study_lib.training_sources(study, world).items() if "mixed" in k]
    assert all("qa_train" in v for v in mixed)
    with pytest.raises(LeakageError, match=f"'qa_train'.*{name}"):
        study_lib.check_leakage(study, world, data_dir)


def test_leak_into_the_celebrity_minority_corpus_is_refused(data):
    study, world, data_dir = data
    _, name = _test_person(data_dir)
    _edit_text(data_dir / "bios_minority.jsonl", 0, f" What major did {name} study?")
    with pytest.raises(LeakageError, match="'bios_minority'"):
        study_lib.check_leakage(study, world, data_dir)


def test_leak_stops_the_study_before_any_training(built, tmp_path):
    study, world, out = built
    shutil.copytree(out, tmp_path / "data")
    _append(tmp_path / "data" / "qa_train.jsonl", read_jsonl(out / "qa_test.jsonl")[0])
    with pytest.raises(LeakageError, match="'qa_train'"):
        study_lib.run_bios_study(_config(), tmp_path, log=lambda *_: None)
    assert not list(tmp_path.glob("pretrain_*"))


@pytest.mark.parametrize("attribute", sorted(QA_TEMPLATES))
def test_leak_guard_finds_every_qa_phrasing_and_spares_biographies(attribute):
    names = {"Anna Beth Carter": 7}
    question = QA_TEMPLATES[attribute].format(name="Anna Beth Carter")
    assert find_leak([{"text": f"Some text. {question} More."}], names)[1] == 7
    assert find_leak([{"text": "Question: Tell me about Anna Beth Carter's job."}], names)
    # A biography of a P_test person (no question) is the study's own training text.
    assert (
        find_leak([{"text": "Anna Beth Carter was born in Dallas, TX. She works."}], names) is None
    )
    assert (
        find_leak(
            [{"question": question.replace("Anna Beth Carter", "Bo Di Eve"), "person": 3}], names
        )
        is None
    )
    with pytest.raises(LeakageError, match="'x' row 1 .*person 7 \\(Anna Beth Carter\\)"):
        check_no_leak({"x": [{"text": "ok"}, {"question": "Q?", "person": 7}]}, names)
