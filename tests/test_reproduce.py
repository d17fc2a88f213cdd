"""The command that regenerates every table: each section runs (tiny settings), writes its table with the
environment beside it, and the docs hold a block for each section to be written into."""

import pathlib
import re

import torch

from conftest import load_script
import pytest

# command lines, packaging, printed output or the docs pipeline, not numbers: CI's second pass (one
# thread) leaves these out (-m 'not plumbing')
pytestmark = pytest.mark.plumbing

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load():
    return load_script("reproduce")


def test_every_section_has_a_block_in_the_docs():
    rep = load()
    for section in rep.SECTIONS:
        doc = (ROOT / rep.DOC[section]).read_text()
        assert len(re.findall(rf"<!-- reproduce:{section} -->", doc)) == 1, section
        assert len(re.findall(rf"<!-- /reproduce:{section} -->", doc)) == 1, section


def test_quick_run_writes_every_table_and_leaves_the_docs_alone(tmp_path):
    rep = load()
    before = {name: (ROOT / name).read_text() for name in set(rep.DOC.values()) | {"README.md"}}
    written = rep.main(["--out", str(tmp_path), "--quick"])
    assert set(written) == set(rep.SECTIONS)
    for section in rep.SECTIONS:
        text = (tmp_path / f"{section}.md").read_text()
        assert text.startswith(f"<!-- reproduce:{section} -->") and "torch threads" in text
        assert f"{torch.backends.cpu.get_cpu_capability()} kernels" in text  # the machine's kind, too
        assert f"--only {section}" in text
        if section != "keras" or written[section]["table"]:
            assert "|---" in written[section]["table"]
    assert "mean ± sd" in written["merge"]["table"] and "p (Holm)" in written["ablation"]["table"]
    assert {name: (ROOT / name).read_text() for name in before} == before


def test_update_doc_replaces_only_its_block(tmp_path):
    rep = load()
    doc = tmp_path / "D.md"
    doc.write_text(
        "a\n<!-- reproduce:x -->\nold\n<!-- /reproduce:x -->\nb\n<!-- reproduce:y -->\nkeep\n<!-- /reproduce:y -->\n"
    )
    rep.update_doc(doc, "x", "<!-- reproduce:x -->\nnew\n<!-- /reproduce:x -->")
    assert (
        doc.read_text()
        == "a\n<!-- reproduce:x -->\nnew\n<!-- /reproduce:x -->\nb\n<!-- reproduce:y -->\nkeep\n<!-- /reproduce:y -->\n"
    )
    import pytest

    with pytest.raises(SystemExit, match="no '<!-- reproduce:z -->' block"):
        rep.update_doc(doc, "z", "")


def test_reuse_and_resume_are_refused_in_one_line_where_there_is_nothing_to_reuse(tmp_path, capsys, monkeypatch):
    import pytest

    rep = load()
    # the section's study refuses another job's progress file (tests/test_heldout_study.py); reproduce passes
    # --resume on to the resumable sections alone
    seen = {}
    monkeypatch.setattr(rep, "section_heldout_seeds", lambda out, quick, **kw: seen.update(kw) or ("", "", {}))
    rep.main(["--out", str(tmp_path), "--only", "heldout-seeds", "--resume", "--quick"])
    assert seen == {"resume": True}
    for argv, said in (
        (["--only", "merge", "--reuse"], "--reuse belongs to the heldout section"),
        (["--only", "heldout", "--reuse"], "heldout/results.json does not exist"),
        (["--only", "merge", "hpo", "--resume"], "--resume belongs to the heldout, heldout-seeds and distil sections"),
    ):
        with pytest.raises(SystemExit) as e:
            rep.main(["--out", str(tmp_path), *argv])
        assert e.value.code == 2 and said in capsys.readouterr().err
    assert not (tmp_path / "heldout").exists()  # refused before any work


def test_the_environment_names_versions_threads_and_kernels_and_its_line_says_them(monkeypatch):
    """One description of the machine for every table and benchmark: package versions from their metadata
    (None where absent), torch's threads now, the CPU kernels; the line prints each."""
    import importlib.metadata as md

    from mega_deap.experiments import environment, environment_line

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        env = environment(("torch", "no-such-package-here"))
    finally:
        torch.set_num_threads(threads)
    assert env["versions"] == {"torch": md.version("torch"), "no-such-package-here": None}
    assert env["threads"] == 1 and env["kernels"] == torch.backends.cpu.get_cpu_capability()
    line = environment_line(env)
    assert line.startswith(f"python {env['python']}, torch {md.version('torch')}, no-such-package-here absent;")
    assert f"torch threads 1, {env['cpu_count']} CPUs ({env['cpu']}, {env['kernels']} kernels)" in line


def test_the_held_out_sections_show_the_study_s_bar_on_a_terminal_and_print_only_their_block(tmp_path):
    """Hours of held-out runs show a progress bar on a terminal; the study's own lines and tables do not
    print beside the section's block."""
    import sys

    from conftest import on_a_terminal

    argv = [str(ROOT / "examples" / "reproduce.py"), "--out", str(tmp_path), "--quick", "--only", "heldout-seeds"]
    text = on_a_terminal([sys.executable, *argv])
    assert "held-out runs" in text and "4/4" in text, text[-2000:]  # one task, two settings, two seeds
    assert text.count("read with its uncertainty") == 1  # the block's table, not the study's printed one too
    assert "digits-mlp-subset same-data seed 0:" not in text and "wrote " not in text
