"""The trial plan: what crosses from the sweep into the measure notebook, checked once there."""

import pytest
from pydantic import ValidationError

from gaplab.measure.trial import TrialPlan
from gaplab.runtimes import Server


def test_the_notebooks_parameters_give_back_the_same_plan():
    server = Server(base_url="http://127.0.0.1:1/v1", served_model="m", runtime_version="v", api_key="secret",
                    extra_body={"ignore_eos": True}, watch_pids=[12])
    plan = TrialPlan(scenario="s.yaml", cell_id="a/m/F16/w/c1", server=server, data_dir="s3://b/p", trial=3,
                     series_id="x", run_id="r", summary_path="/tmp/r.json")
    params = plan.parameters()
    assert "api_key" not in params["server"]  # a key never crosses into the notebook or its saved copy
    again = TrialPlan(**{**params, "server": params["server"] or None, "summary_path": params["summary_path"] or None})
    assert again == plan.model_copy(update={"server": Server(**{**server.__dict__, "api_key": None})})
    blank = TrialPlan(scenario="s.yaml").parameters()
    assert blank["server"] == {} and blank["summary_path"] == ""


@pytest.mark.parametrize("bad, field", [({"trial": 0}, "trial"), ({"server": {"base_url": "x"}}, "server"),
                                        ({"cel_id": "x"}, "cel_id")])
def test_a_wrong_parameter_is_named(bad, field):
    with pytest.raises(ValidationError, match=field):
        TrialPlan(scenario="s.yaml", **bad)
