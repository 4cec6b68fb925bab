"""gaplab.quality without servers: the llama-perplexity parser on recorded output, scoring,
intervals, the question set and its loader (the quality page's frames: test_report_quality.py)."""

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gaplab import quality as q
from gaplab.cli import app
from gaplab.quality import evaltext

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "llama-perplexity"
ROOT = Path(__file__).resolve().parents[2]


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# ---------------------------------------------------------------- llama-perplexity output


def test_reference_run_gives_perplexity_with_its_uncertainty():
    res = q.parse_base(fixture("smollm2-F16-base.txt"))
    assert res["perplexity"] == (38.1795, 3.70877)
    assert res["n_tokens"][0] == 4 * 255  # 4 chunks of 512, the second half of each scored


def test_kld_run_gives_every_figure_with_its_uncertainty():
    res = q.parse_kld(fixture("smollm2-Q8_0-kld.txt"))
    assert res["perplexity"] == (38.385181, 3.725795)
    assert res["perplexity_base"] == (38.179456, 3.708773)
    assert res["ppl_ratio"] == (1.005388, 0.003249)
    assert res["kld_mean"] == (0.004431, 0.000130)
    assert res["kld_p99"] == (0.018370, None)
    assert res["rms_dp_pct"] == (1.557, 0.094)
    assert res["top1_agreement_pct"] == (96.569, 0.570)
    assert res["n_tokens"][0] == 1020


def test_a_file_against_itself_reads_as_zero_divergence_and_full_agreement():
    res = q.parse_kld(fixture("smollm2-F16-kld-self.txt"))
    assert abs(res["kld_mean"][0]) < 1e-5
    assert res["top1_agreement_pct"][0] == 100.0
    assert res["ppl_ratio"][0] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("label", ["Mean    KLD", "Same top p", "Mean PPL(Q)", "99.0%   KLD"])
def test_a_missing_line_fails_loudly_and_names_it(label):
    text = "\n".join(s for s in fixture("smollm2-Q8_0-kld.txt").splitlines() if not s.startswith(label))
    with pytest.raises(q.ToolOutputError, match=label.replace("(", r"\(").replace(")", r"\)")):
        q.parse_kld(text)


def test_a_reworded_format_is_not_read_as_zero():
    text = fixture("smollm2-Q8_0-kld.txt").replace("Mean    KLD:", "KLD (mean):")
    with pytest.raises(q.ToolOutputError, match="output format changed"):
        q.parse_kld(text)


def test_nan_is_refused():
    text = fixture("smollm2-Q8_0-kld.txt").replace("Mean    KLD:   0.004431", "Mean    KLD:   nan")
    with pytest.raises(q.ToolOutputError, match="not a finite number"):
        q.parse_kld(text)


def test_a_reference_run_that_scored_nothing_fails_although_the_tool_exited_0():
    with pytest.raises(q.ToolOutputError, match="too short"):
        q.parse_base(fixture("smollm2-text-too-short.txt"))
    with pytest.raises(q.ToolOutputError, match="Final estimate"):
        q.parse_base(fixture("smollm2-F16-base.txt").replace("Final estimate", "Estimate"))


def test_commands_keep_the_logits_file_in_both_steps(tmp_path):
    base = q.perplexity_command(Path("m.gguf"), tmp_path / "x.logits", Path("t.txt"), chunks=3, ctx=256)
    kld = q.perplexity_command(Path("m.gguf"), tmp_path / "x.logits", None)
    assert base[base.index("--kl-divergence-base") + 1] == kld[kld.index("--kl-divergence-base") + 1]
    assert base[base.index("--chunks") + 1] == "3" and base[base.index("-c") + 1] == "256"
    assert "-f" in base and "--kl-divergence" not in base
    assert "--kl-divergence" in kld and "-f" not in kld and kld[kld.index("-t") + 1] == str(q.TOOL_THREADS)


# ---------------------------------------------------------------- the evaluation text


def _fake_deb(path: Path, member: str, payload: bytes) -> None:
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:xz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    out = b"!<arch>\n"
    for name, body in ((b"debian-binary", b"2.0\n"), (b"data.tar.xz", tar_bytes.getvalue())):
        head = name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
        out += head + str(len(body)).encode().ljust(10) + b"`\n" + body + (b"\n" if len(body) % 2 else b"")
    path.write_bytes(out)


def test_a_member_comes_out_of_a_deb_without_dpkg(tmp_path):
    deb = tmp_path / "x.deb"
    _fake_deb(deb, "./usr/share/doc/x/t.txt.gz", gzip.compress(b"hello"))
    assert gzip.decompress(evaltext._deb_member(deb, "./usr/share/doc/x/t.txt.gz")) == b"hello"
    (tmp_path / "bad.deb").write_bytes(b"not an archive")
    with pytest.raises(q.SetupError, match="not a Debian package"):
        evaltext._deb_member(tmp_path / "bad.deb", "x")


def test_the_excerpt_keeps_the_sections_and_skips_the_table_of_contents():
    text = ("Title\n   Chapter 1. Intro\n   Part II. Rest\nChapter 1. Intro\n\n   Body one.\n"
            "  Part\u00a0II.\u00a0Rest\n   Lexicon\nAppendix A. Folk\n   Body two.  \nBibliography\n   Books\n")
    out = evaltext._excerpt(text, (("Chapter 1. Intro", "Part II. Rest"), ("Appendix A. Folk", "Bibliography")))
    assert out == "Chapter 1. Intro\n\n   Body one.\nAppendix A. Folk\n   Body two.\n"
    with pytest.raises(q.SetupError, match="not found"):
        evaltext._excerpt(text, (("Chapter 9. None", "Bibliography"),))


def test_the_text_source_is_pinned():
    src = q.EVAL_TEXT
    assert src.package == "jargon-text" and src.version == "4.4.7-4.1"
    assert all(len(h) == 64 for h in (src.deb_sha256, src.text_sha256, src.sha256))
    assert src.license.startswith("public domain")


# ---------------------------------------------------------------- scoring and intervals


def item(answer, choices=(), tolerance=None, question="q?"):
    return q.Item(id="x", question=question, answer=answer, choices=tuple(choices), tolerance=tolerance)


def test_exact_match_ignores_case_quotes_and_a_final_period_only():
    it = item("L")
    assert q.score(it, " l.\nmore text") == (True, "l.")
    assert q.score(it, '"L"')[0]
    assert not q.score(it, "LL")[0] and not q.score(it, "The letter L")[0] and not q.score(it, "")[0]


def test_numeric_reads_the_stated_result_within_the_tolerance():
    assert q.score(item("15"), "7 + 8 = 15")[0]
    assert q.score(item("1500"), "1,500 meters")[0]
    assert q.score(item("2.5", tolerance=0.01), "2.50")[0]
    assert q.score(item("2.5", tolerance=0.01), "2.509")[0]
    assert not q.score(item("2.5", tolerance=0.01), "2.52")[0]
    assert not q.score(item("15"), "15.5")[0]  # no tolerance given: equal numbers only
    assert q.score(item("15"), "sixteen") == (False, None)
    assert not q.score(item("16"), "15\n16")[0]  # the first line is the answer


def test_multiple_choice_takes_the_letter_or_the_text_of_a_choice():
    it = item("B", choices=["12", "57", "33"])
    assert q.score(it, " B") == (True, "B")
    assert q.score(it, "B) 57")[0] and q.score(it, "(B)")[0] and q.score(it, "57")[0]
    assert not q.score(it, "A")[0] and not q.score(it, "Banana")[0] and not q.score(it, "33")[0]


def test_wilson_interval():
    lo, hi = q.wilson(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = q.wilson(10, 10)
    assert hi == 1 and lo == pytest.approx(0.7225, abs=1e-4)
    lo, hi = q.wilson(29, 200)
    assert lo == pytest.approx(0.1030, abs=1e-3) and hi == pytest.approx(0.2006, abs=1e-3)


def test_accuracy_counts_failed_requests_as_wrong_and_reports_them():
    a = [q.Answer(item("3"), completion="3"), q.Answer(item("4"), completion="5"),
         q.Answer(item("5"), error="HTTP 500")]
    rows = {r["metric"]: r for r in q.accuracy_rows(a)}
    assert rows["task_accuracy_pct"]["value"] == pytest.approx(100 / 3)
    assert rows["task_accuracy_pct"]["n"] == 3
    assert rows["task_accuracy_pct"]["ci_low"] < 100 / 3 < rows["task_accuracy_pct"]["ci_high"]
    assert rows["task_errors"]["value"] == 1


# ---------------------------------------------------------------- the question set


def test_the_shipped_set_is_what_its_seed_makes():
    shipped = [json.loads(s) for s in q.EVAL_SET.read_text().splitlines()]
    assert shipped == q.make_eval_set(q.EVAL_SEED, q.EVAL_SIZE)
    assert len(shipped) >= 200 and len({s["question"] + str(s.get("choices")) for s in shipped}) == len(shipped)
    assert q.make_eval_set(1)[:5] != shipped[:5]


def test_every_shipped_answer_scores_right_and_a_wrong_one_wrong():
    for it in q.load_eval_set(q.EVAL_SET):
        assert q.score(it, it.answer)[0], it
        wrong = str(float(it.answer) + 1) if it.scoring == "numeric" else "B" if it.answer == "A" else "A"
        assert not q.score(it, wrong)[0], it
    kinds = {it.scoring for it in q.load_eval_set(q.EVAL_SET)}
    assert kinds == {"exact", "numeric", "choice"}


def test_prompts_show_the_examples_then_the_question():
    it = item("C", choices=["1", "2", "3"], question="Which number is the largest?")
    text = q.completion_prompt(it)
    assert text.endswith("Question: Which number is the largest? A) 1 B) 2 C) 3\nAnswer:")
    msgs = q.chat_messages(it)
    assert [m["role"] for m in msgs] == ["user", "assistant"] * len(q.FEW_SHOT) + ["user"]
    assert msgs[-1]["content"] == "Which number is the largest? A) 1 B) 2 C) 3"


def test_a_users_set_loads_with_choices_given_as_text(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text('{"question": "Capital of France?", "answer": "Paris"}\n\n'
                 '{"question": "2+2?", "answer": 4, "tolerance": 0}\n'
                 '{"question": "Pick", "choices": ["red", "blue"], "answer": "blue", "id": "c1"}\n')
    items = q.load_eval_set(f)
    assert [i.scoring for i in items] == ["exact", "numeric", "choice"]
    assert items[2].answer == "B" and items[2].id == "c1" and items[0].id == "mine-1"


@pytest.mark.parametrize("line, why", [
    ('{"question": "a?", "answer": "b"', "not JSON"),
    ('["a", "b"]', "JSON object"),
    ('{"answer": "b"}', "'question'"),
    ('{"question": "a?"}', "'answer'"),
    ('{"question": "a?", "answer": "C", "choices": ["x", "y"]}', "letters AB"),
    ('{"question": "a?", "answer": "1", "tolerance": -1}', "'tolerance'"),
])
def test_a_malformed_line_names_the_file_and_line(tmp_path, line, why):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"question": "ok?", "answer": "yes"}\n' + line + "\n")
    with pytest.raises(q.EvalSetError) as exc:
        q.load_eval_set(f)
    msg = str(exc.value)
    assert msg.startswith(f"{f}:2: ") and why in msg and "\n" not in msg


def test_the_cli_stops_on_a_malformed_line_with_one_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"question": "ok?", "answer": "yes"}\n{"question": "a?", "answer": }\n')
    res = CliRunner().invoke(app, ["quality", str(ROOT / "scenarios" / "local-cpu.yaml"), "--eval", str(f),
                                   "--data-dir", str(tmp_path / "raw")])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines() if hasattr(res, "stderr") else res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gaplab: error: {f}:2: not JSON"), lines
    assert not (tmp_path / "raw").exists()  # nothing ran
