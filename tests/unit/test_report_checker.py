"""Published claims tested on hand-built trials: each test kind decides by its intervals, and a
bad claims file stops with one line naming the file, row and field."""

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from gaplab.report import checker, claims_file
from gaplab.report.workloads import COMPARED
from gaplab.storage import run_record

HEADER = ",".join(claims_file.COLUMNS)


def trials(rows: list[tuple]) -> pl.DataFrame:
    """(runtime, kind, slots, quant, users, per_user_tok_s, aggregate_tok_s, ttft_p50_ms), three trials each
    with a 2% spread."""
    out = []
    for runtime, kind, slots, quant, users, per_user, agg, ttft in rows:
        for k, f in enumerate((0.98, 1.0, 1.02), 1):
            out.append({"runtime": runtime, "runtime_kind": kind, "parallel": slots, "quant": quant,
                        "config": f"{runtime} · {quant}", "model": "m", "workload": "w", "concurrency": users,
                        "trial": k, "run_id": f"{runtime}-{users}-{k}", "per_user_tok_s": per_user * f,
                        "aggregate_tok_s": agg * f, "ttft_p50_ms": ttft * f, "rss_mb": 500.0 * f})
    return pl.DataFrame(out)


SERVERS = trials([
    ("single", "llamacpp", 1, "Q4", 1, 100, 90, 100), ("single", "llamacpp", 1, "Q4", 4, 100, 92, 1200),
    ("single", "llamacpp", 1, "Q4", 8, 100, 91, 2600),
    ("batch", "llamacpp", 8, "Q4", 1, 100, 90, 100), ("batch", "llamacpp", 8, "Q4", 4, 60, 200, 150),
    ("batch", "llamacpp", 8, "Q4", 8, 45, 300, 200),
    ("vllm", "vllm", 8, "BF16", 1, 60, 55, 40), ("vllm", "vllm", 8, "BF16", 4, 55, 200, 60),
    ("vllm", "vllm", 8, "BF16", 8, 50, 380, 90),
])


def claims(tmp_path, *rows: str) -> pl.DataFrame:
    path = tmp_path / "claims.csv"
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    return claims_file.load_claims(path)


def verdicts(tmp_path, *rows: str, starts=pl.DataFrame(), recovery=pl.DataFrame()) -> list[str]:
    return checker.check(claims(tmp_path, *rows), SERVERS, starts, recovery)["verdict"].to_list()


def test_faster_holds_fails_or_is_mixed_by_every_pair_it_covers(tmp_path):
    assert verdicts(tmp_path,
                    "a,s,src,single beats vllm,faster,kind=llamacpp;slots=1,kind=vllm,per_user_tok_s,1,,",
                    "b,s,src,vllm beats single,faster,kind=vllm,kind=llamacpp;slots=1,per_user_tok_s,1,,",
                    "c,s,src,batching loses for one user,faster,kind=llamacpp;slots=1,slots>1,per_user_tok_s,1,,",
                    ) == ["holds here", "does not hold here", "mixed here"]  # vLLM slower; batch the same


def test_alternatives_take_the_first_selector_that_matches(tmp_path):
    # no Ollama measured: the single-slot llama.cpp server stands in
    assert verdicts(tmp_path, "a,s,src,x,faster,kind=ollama|kind=llamacpp;slots=1,kind=vllm,ttft_p50_ms,1,,"
                    ) == ["does not hold here"]  # vLLM's TTFT is lower


def test_scaling_and_linearity_and_overtaking(tmp_path):
    assert verdicts(tmp_path,
                    "a,s,src,near-linear,scales_at_least,kind=vllm,,aggregate_tok_s,,0.5n,",
                    "b,s,src,flat,scales_at_most,kind=llamacpp;slots=1,,aggregate_tok_s,,1.3,",
                    "c,s,src,queue ttft linear,linear_in_users,kind=llamacpp;slots=1,,ttft_p50_ms,,0.95,",
                    "d,s,src,overtakes by 4,leads_from,slots>1,kind=llamacpp;slots=1,aggregate_tok_s,,4,",
                    "e,s,src,flat ttft,scales_at_most,kind=vllm,,ttft_p50_ms,,1.5,",
                    "f,s,src,memory flat,scales_at_most,kind=vllm,,rss_mb,,1.1,",
                    ) == ["holds here", "holds here", "holds here", "holds here", "does not hold here", "holds here"]


def test_stability_cold_start_recovery_and_what_cannot_be_tested(tmp_path):
    starts = pl.DataFrame({"runtime": ["vllm", "single", "batch"], "runtime_kind": ["vllm", "llamacpp", "llamacpp"],
                           "model": ["m"] * 3, "quant": ["BF16", "Q4", "Q4"], "to_healthy_s": [80.0, 0.5, 0.6],
                           "to_first_token_s": [90.0, 0.8, 1.0]})
    recovery = pl.DataFrame({"model": ["m", "m"], "quant": ["Q8_0", "F16"], "runtime": ["single"] * 2,
                             "reference": ["F16"] * 2, "accuracy_pct": [40.0, 41.0], "acc_low": [38.0, 39.0],
                             "acc_high": [42.0, 43.0], "ref_accuracy_pct": [41.0, 41.0],
                             "recovery_pct": [97.6, 100.0]})
    got = verdicts(tmp_path,
                   "a,s,src,steadier,more_stable,kind=vllm,kind=llamacpp,per_user_tok_s,,,",
                   "b,s,src,minutes vs seconds,starts_slower,kind=vllm,kind=llamacpp,cold_start_s,,10,",
                   "c,s,src,8-bit keeps 98%,recovers,quant=Q8_0,,recovery_pct,,98,add Q8_0",
                   "d,s,src,6-bit keeps 98%,recovers,quant=Q6_K,,recovery_pct,,98,add Q6_K",
                   "e,s,src,at 32 users,faster,kind=vllm,kind=llamacpp,aggregate_tok_s,32,,a bigger box",
                   "f,s,src,split,not_testable,,,,,,an Ollama on a GPU",
                   starts=starts, recovery=recovery)
    # the same 2% spread on both sides: no measurable difference in stability
    assert got == ["undecided here", "holds here", "undecided here", "not testable here", "not testable here",
                   "not testable here"]


@pytest.mark.parametrize("row, field", [
    ("a,s,src,x,fastest,kind=vllm,,per_user_tok_s,1,,", "test"),
    ("a,s,src,x,faster,kind=vllm,kind=llamacpp,tokens_per_s,1,,", "metric"),
    ("a,s,src,x,faster,engine=vllm,kind=llamacpp,per_user_tok_s,1,,", "a"),
    ("a,s,src,x,faster,kind=vllm,kind=llamacpp,per_user_tok_s,many,,", "users"),
    ("a,s,src,x,scales_at_least,kind=vllm,,aggregate_tok_s,,half,", "threshold"),
    ("a,s,src,x,not_testable,,,,,,", "needs"),
])
def test_a_bad_row_names_the_file_row_and_field(tmp_path, row, field):
    with pytest.raises(claims_file.ClaimsError, match=rf"claims.csv row 3: {field}"):
        claims(tmp_path, "ok,s,src,fine,not_testable,,,,,,a GPU", row)


def test_the_report_command_stops_on_a_bad_claims_file_in_one_line(tmp_path, monkeypatch):
    from gaplab.cli import app

    path = tmp_path / "claims.csv"
    path.write_text(HEADER + "\na,s,src,x,faster,kind=vllm,,tok_s,1,,\n")
    monkeypatch.setattr(claims_file, "CLAIMS_FILE", path)
    res = CliRunner().invoke(app, ["report", "--data-dir", str(tmp_path / "raw"), "--out", str(tmp_path / "site")])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "claims.csv row 2: metric: 'tok_s'" in lines[0], lines


def test_the_shipped_claims_file_loads_and_covers_the_articles():
    shipped = claims_file.load_claims()
    assert shipped["claim_id"].is_unique().all()
    assert shipped.height >= 12 and shipped["seed_file"].n_unique() >= 4


def test_the_report_command_refuses_an_empty_data_folder_in_one_line(tmp_path):
    from gaplab.cli import app

    res = CliRunner().invoke(app, ["report", "--data-dir", str(tmp_path / "raw"), "--out", str(tmp_path / "site")])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "holds no runs" in lines[0] and "gaplab sweep" in lines[0], lines


def test_without_quality_runs_a_recovery_claim_is_not_testable(tmp_path):
    assert verdicts(tmp_path, "c,s,src,8-bit keeps 98%,recovers,quant=Q8_0,,recovery_pct,,98,add Q8_0"
                    ) == ["not testable here"]


def test_a_straight_but_flat_line_is_not_growth_in_proportion_to_users(tmp_path):
    flat = trials([("q", "llamacpp", 1, "Q4", u, 100, 90, t) for u, t in ((1, 1000), (2, 1010), (4, 1030), (8, 1070))])
    got = checker.check(claims(tmp_path, "c,s,src,x,linear_in_users,kind=llamacpp;slots=1,,ttft_p50_ms,,0.95,"),
                        flat, pl.DataFrame(), pl.DataFrame())
    assert got["verdict"].to_list() == ["does not hold here"] and "the rise 7%" in got["evidence"][0]


def test_recovery_carries_both_intervals_and_never_compares_a_file_with_itself(tmp_path):
    recovery = pl.DataFrame({"model": ["m"] * 3, "quant": ["Q8_0", "Q4_0", "F16"], "runtime": ["single"] * 3,
                             "reference": ["F16"] * 3, "accuracy_pct": [20.0, 40.0, 27.0],
                             "acc_low": [15.0, 38.0, 21.0], "acc_high": [26.0, 42.0, 34.0],
                             "ref_accuracy_pct": [27.0] * 3, "recovery_pct": [74.1, 148.1, 100.0]})
    rows = ["c,s,src,8-bit keeps 98%,recovers,quant=Q8_0,,recovery_pct,,98,x",
            "d,s,src,16-bit keeps itself,recovers,quant=F16,,recovery_pct,,98,x"]
    got = checker.check(claims(tmp_path, *rows), SERVERS, pl.DataFrame(), recovery)
    # 20% [15-26] against 27% [21-34]: the ratio may lie between 44% and 124%: undecided, not "fails"
    assert got["verdict"].to_list() == ["undecided here", "not testable here"]


def test_a_zero_spread_and_a_missing_threshold_are_handled(tmp_path):
    steady = trials([("v", "vllm", 8, "BF16", 1, 50, 50, 40)]).with_columns(per_user_tok_s=pl.lit(50.0))
    both = pl.concat([steady, trials([("s", "llamacpp", 1, "Q4", 1, 100, 90, 100)])])
    got = checker.check(claims(tmp_path, "a,s,src,x,more_stable,kind=vllm,kind=llamacpp,per_user_tok_s,,,"),
                        both, pl.DataFrame(), pl.DataFrame())
    assert got["verdict"].to_list() == ["holds here"]  # no spread at all against 2%
    with pytest.raises(claims_file.ClaimsError, match="row 2: threshold: the test scales_at_least needs one"):
        claims(tmp_path, "a,s,src,x,scales_at_least,kind=vllm,,aggregate_tok_s,,,")


def test_leads_from_keeps_each_workload_apart(tmp_path):
    # on a second workload the single slot keeps ahead: the claim holds for one workload, not the other
    other = trials([("single", "llamacpp", 1, "Q4", u, 100, 300, 100) for u in (1, 4, 8)]
                   + [("batch", "llamacpp", 8, "Q4", u, 50, 90, 100) for u in (1, 4, 8)]).with_columns(
        workload=pl.lit("w2"), run_id=pl.col("run_id") + "-w2")
    both = pl.concat([SERVERS, other])
    got = checker.check(claims(tmp_path, "d,s,src,x,leads_from,kind=llamacpp;slots>1,kind=llamacpp;slots=1,"
                                         "aggregate_tok_s,,4,"),
                        both, pl.DataFrame(), pl.DataFrame())
    assert got["verdict"].to_list() == ["mixed here"]


def switch_trials(pairs: list[tuple]) -> pl.DataFrame:
    """The workloads study's trial rows (report.workloads.trials) of pairs of servers of one kind:
    (runtime, kind, flags JSON, workload kind, metric, value), three trials each with a 2% spread."""
    out = []
    for runtime, kind, flags, wl_kind, metric, value in pairs:
        for k, f in enumerate((0.98, 1.0, 1.02), 1):
            out.append({"machine_id": "m1", "model": "m", "quant": "F16", "workload": wl_kind, "workload_kind": wl_kind,
                        "runtime_kind": kind, "concurrency": 4, "runtime": runtime,
                        "flags": run_record.columns({"cell": {"flags": json.loads(flags)}})["flags"],
                        "cell_key": runtime, "run_id": f"{runtime}-{k}",
                        **{m: None for ms in COMPARED.values() for m in ms}, metric: value * f})
    return pl.DataFrame(out, infer_schema_length=None)


def test_a_switch_claim_reads_the_pairs_that_differ_in_that_switch_alone(tmp_path):
    rows = ("p,s,src,cache cuts ttft by 40%,switch_cuts,switch=prefix_cache,,ttft_p50_ms,,40,",
            "q,s,src,chunked prefill cuts stalls,switch_cuts,switch=chunked_prefill,,short_gap_p99_ms,,0,")
    cache = [("ll", "llamacpp", "{}", "shared-prefix", "ttft_p50_ms", 300),
             ("ll-nocache", "llamacpp", '{"prefix_cache": false}', "shared-prefix", "ttft_p50_ms", 1000),
             ("vl", "vllm", "{}", "shared-prefix", "ttft_p50_ms", 800),
             ("vl-nocache", "vllm", '{"prefix_cache": false}', "shared-prefix", "ttft_p50_ms", 1000)]
    chunk = [("vl", "vllm", "{}", "long-prompt-mix", "short_gap_p99_ms", 900),
             ("vl-nochunk", "vllm", '{"chunked_prefill": false}', "long-prompt-mix", "short_gap_p99_ms", 600)]

    def got(pairs):
        return checker.check(claims(tmp_path, *rows), SERVERS, pl.DataFrame(), pl.DataFrame(),
                             switch_trials(pairs))["verdict"].to_list()

    # llama.cpp's cache cuts 70%, vLLM's only 20%: mixed; chunked prefill made stalls longer
    assert got(cache + chunk) == ["mixed here", "does not hold here"]
    assert got(cache[:2] + chunk[::-1]) == ["holds here", "does not hold here"]
    # no pair about the switch: not testable, and never read from a pair about another switch
    assert got(chunk) == ["not testable here", "does not hold here"]
    # a pair that differs in more than the switch is read, and the other difference named
    wider = [chunk[0], (*chunk[1][:2], '{"chunked_prefill": false, "extra_args": []}', *chunk[1][3:])]
    res = checker.check(claims(tmp_path, *rows), SERVERS, pl.DataFrame(), pl.DataFrame(), switch_trials(wider))
    assert res["verdict"][1] == "does not hold here" and "also differs in extra_args" in res["evidence"][1]
    no_study = checker.check(claims(tmp_path, *rows), SERVERS, pl.DataFrame(), pl.DataFrame())
    assert no_study["verdict"].to_list() == ["not testable here"] * 2
    assert "workloads study" in no_study["evidence"][0]


def test_a_claim_about_ollama_is_never_tested_on_a_stand_in(tmp_path):
    assert verdicts(tmp_path, "a,s,src,ollama beats vllm,faster,kind=ollama;slots=1,kind=vllm,ttft_p50_ms,1,,"
                    ) == ["not testable here"]
    with_ollama = pl.concat([SERVERS, trials([("ollama", "ollama", 1, "Q4", 1, 100, 90, 30)])], how="diagonal")
    got = checker.check(claims(tmp_path, "a,s,src,x,faster,kind=ollama;slots=1,kind=vllm,ttft_p50_ms,1,,"),
                        with_ollama, pl.DataFrame(), pl.DataFrame())
    assert got["verdict"].to_list() == ["holds here"] and "ollama" in got["evidence"][0]


@pytest.mark.parametrize("row, field", [
    ("s,s,src,x,switch_cuts,switch=kv_offload,,ttft_p50_ms,,40,", "a: 'switch=kv_offload'"),
    ("s,s,src,x,switch_cuts,switch=prefix_cache,,aggregate_tok_s,,40,", "metric: 'aggregate_tok_s'"),
    ("s,s,src,x,switch_cuts,switch=prefix_cache,,ttft_p50_ms,,forty,", "threshold: 'forty'"),
])
def test_a_bad_switch_claim_stops_in_one_line_naming_the_field(tmp_path, row, field):
    with pytest.raises(claims_file.ClaimsError, match="row 2: " + field.replace("(", r"\(")):
        claims(tmp_path, row)


def test_two_servers_the_same_within_the_margin_make_a_faster_claim_fail(tmp_path):
    # single and batch both decode 100 tok/s for one user: the same within 5%, so neither is faster
    rows = claims(tmp_path, "a,s,src,single beats batch,faster,kind=llamacpp;slots=1,slots>1,per_user_tok_s,1,,")
    got = checker.check(rows, SERVERS.filter(pl.col("runtime") != "vllm"), pl.DataFrame(), pl.DataFrame())
    assert got["verdict"].to_list() == ["does not hold here"]
    assert "the same within 5%" in got["evidence"][0]


def test_a_threshold_claim_holds_where_its_interval_is_the_threshold_within_the_margin(tmp_path):
    # single's total tok/s goes 90 -> 91 from 1 to 8 users: ×1.01, whose interval straddles ×1.0
    mean = pl.col("aggregate_tok_s").mean().over("runtime", "concurrency")
    calm = SERVERS.with_columns(aggregate_tok_s=mean + (pl.col("aggregate_tok_s") - mean) / 4)  # a 0.5% spread
    rows = claims(tmp_path, "b,s,src,no gain at all,scales_at_most,kind=llamacpp;slots=1,,aggregate_tok_s,,1.0,")
    got = checker.check(rows, calm, pl.DataFrame(), pl.DataFrame())
    assert got["verdict"].to_list() == ["holds here"] and "the threshold within 5%" in got["evidence"][0]
    narrow = checker.check(rows, calm, pl.DataFrame(), pl.DataFrame(), margin=0.001)
    assert narrow["verdict"].to_list() == ["undecided here"]
