"""The command that regenerates every table: each section runs (tiny settings), writes its table with the
environment beside it, and the docs hold a block for each section to be written into."""

import pathlib
import re

import torch

from conftest import load_script

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


def test_reuse_is_refused_in_one_line_where_there_is_nothing_to_reuse(tmp_path, capsys):
    import pytest

    rep = load()
    for argv, said in (
        (["--only", "merge", "--reuse"], "--reuse belongs to the heldout section"),
        (["--only", "heldout", "--reuse"], "heldout/results.json does not exist"),
    ):
        with pytest.raises(SystemExit) as e:
            rep.main(["--out", str(tmp_path), *argv])
        assert e.value.code == 2 and said in capsys.readouterr().err
    assert not (tmp_path / "heldout").exists()  # refused before any work
