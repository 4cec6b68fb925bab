"""The decode batch from chunk arrivals, on constructed streams whose steps are known."""

import polars as pl

from gaplab.report import batch

MS = 1_000_000


def arrivals(streams: dict[int, list[int]], run_id: str = "r") -> pl.DataFrame:
    """streams: request index -> its tokens' arrival times (ms)."""
    return pl.DataFrame([{"run_id": run_id, "request_index": i, "arrival_ns": t * MS}
                         for i, times in streams.items() for t in times])


def test_streams_decoded_together_are_one_step_and_streams_in_turn_are_not():
    # a batching server: three streams, a step every 50 ms, each step's tokens written within 2 ms
    together = arrivals({i: [100 + 50 * k + i for k in range(10)] for i in range(3)})
    s = batch.steps(together)
    assert s.height == 10 and s["batch"].to_list() == [3] * 10
    # one slot: the same three streams one after another
    in_turn = arrivals({i: [100 + 500 * i + 50 * k for k in range(10)] for i in range(3)})
    assert batch.steps(in_turn)["batch"].to_list() == [1] * 30


def test_a_stream_joining_midway_raises_the_batch_from_its_first_token():
    s = batch.steps(arrivals({0: [50 * k for k in range(10)], 1: [200 + 50 * k + 1 for k in range(6)]}))
    assert s["batch"].to_list() == [1, 1, 1, 1] + [2] * 6


def test_the_estimate_counts_the_step_under_way_and_the_prompts_being_prefilled():
    s = batch.steps(arrivals({0: [50 * k for k in range(10)], 1: [200 + 50 * k + 1 for k in range(6)]}))
    # request 1 was sent at 120 ms and got its first token in the step at 200 ms: prefilled before it
    firsts = [(0, 0), (120 * MS, 201 * MS)]
    got = batch.estimate_at(s, [10 * MS, 130 * MS, 170 * MS, 260 * MS, 700 * MS], firsts)
    # at 130 ms request 1 is sent but its first token is two steps away: not yet prefilling
    assert got == [1, 1, 2, 2, 0]  # after the last step (451 ms) nothing runs


def test_a_stream_that_ended_is_not_counted_beside_the_request_sent_to_replace_it():
    # closed loop: stream 0's last token comes at 150 ms, its user sends request 1 at 152 ms
    s = batch.steps(arrivals({0: [0, 50, 100, 150], 1: [201, 251, 301]}))
    firsts = [(0, 0), (152 * MS, 201 * MS)]
    # at 170 ms only request 1 runs (its prompt); stream 0 is done, though its step arrived last
    assert batch.estimate_at(s, [120 * MS, 151 * MS, 170 * MS, 260 * MS], firsts) == [1, 0, 1, 1]


def test_a_stall_with_another_requests_first_token_inside_is_a_prefill_stall():
    a = arrivals({0: [0, 50, 100, 400, 450], 1: [380, 430], 2: [900, 950, 1000, 1300, 1350]})
    firsts = pl.DataFrame({"run_id": ["r"] * 3, "request_index": [0, 1, 2], "first_token_ns": [0, 380 * MS, 900 * MS]})
    got = batch.stalls(a, firsts).row(0, named=True)
    # stream 0 waited 300 ms while stream 1's prompt was processed; stream 2's 300 ms had no first token in it
    assert (got["stalls"], got["prefill_stalls"], got["longest_stall_ms"]) == (2, 1, 300.0)


def test_the_summary_states_how_far_the_estimate_is_from_the_servers_count():
    samples = pl.DataFrame({"source": ["llama.cpp /slots"] * 4, "server": [2.0, 2.0, 1.0, 2.0],
                            "estimate": [2.0, 1.0, 1.0, 0.0]})
    row = batch.agreement_summary(samples).row(0, named=True)
    assert (row["samples"], row["mean_abs_diff"], row["within_one"]) == (4, 0.75, 75.0)
    assert "75% of samples within one request" in batch.story(batch.agreement_summary(samples))
    assert "stands alone" in batch.story(pl.DataFrame())
