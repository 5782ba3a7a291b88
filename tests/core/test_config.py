import typing

import pytest

from hepstream.config import Config, ConfigError, config_from_dict, load_config
from hepstream.config_types import parse_bytes


def test_empty_file_gives_one_machine_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    config = load_config(path)
    assert config == Config()
    assert config.kafka.bootstrap is None
    assert config.serve.http.host == "127.0.0.1"
    assert config.dataset.topic == "demo.events"


def test_sizes_accept_units():
    config = config_from_dict({"kafka": {"max_message_bytes": "8 MB"}, "producer": {"step_size": "1 MiB"}})
    assert config.kafka.max_message_bytes == 8_000_000
    assert config.producer.step_size == 1_048_576
    assert parse_bytes(" 2.5 kB ") == 2500


@pytest.mark.parametrize("bad", ["eight MB", "4 parsecs", "-1 MB", 0, True])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(ValueError):
        parse_bytes(bad)


def test_every_problem_is_named_by_its_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "kafka:\n  partitions: 0\n  compresion: zstd\n"
        "features:\n  jagged:\n    - branches: [Muon_pt]\n      length: -3\n"
        "trainig: {}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert "4 problem(s)" in message
    assert "kafka.partitions:" in message
    assert "kafka.compresion: unknown key; did you mean 'compression'?" in message
    assert "features.jagged.0.length:" in message
    assert "trainig: unknown key; did you mean 'training'?" in message


@pytest.mark.parametrize(("data", "line"), [
    ({"training": {"batchsize": 64}}, "training.batchsize: unknown key; did you mean 'batch_size'?"),
    ({"dataset": {"files": [{"url": "a.root", "lable": 1}]}},
     "dataset.files.0.lable: unknown key; did you mean 'label'?"),
    ({"training": {"zzz": 1}}, "training.zzz: unknown key\n"),
])
def test_an_unknown_key_suggests_the_nearest_keys_of_its_section(data, line):
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data)
    assert line in str(caught.value) + "\n"


def test_chunks_must_fit_in_messages():
    with pytest.raises(ConfigError, match=r"producer.step_size: .* exceeds kafka.max_message_bytes"):
        config_from_dict({"producer": {"step_size": "8 MB"}, "kafka": {"max_message_bytes": "4 MB"}})


def test_sort_key_must_be_a_selected_branch():
    with pytest.raises(ConfigError, match="sort_by 'Jet_pt' must be one of"):
        config_from_dict({"features": {"jagged": [{"branches": ["Muon_pt"], "sort_by": "Jet_pt"}]}})


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "nope.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listing)


def test_feature_branches_keep_order_without_repeats():
    config = config_from_dict(
        {"features": {"flat": ["MET_pt"], "jagged": [{"branches": ["Muon_pt", "Muon_eta"]}, {"branches": ["Muon_pt"]}]}}
    )
    assert config.features.branches == ["MET_pt", "Muon_pt", "Muon_eta"]


def _keys(model, prefix=""):
    for name, field in model.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if hasattr(type(default), "model_fields") and not isinstance(default, list):
            yield from _keys(type(default), f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _bounds(field) -> str:
    """The numeric bounds of a field, ``(>= 1, <= 65535)``, or of its items or optional type; "" when it has none."""
    found = list(field.metadata)
    for member in typing.get_args(field.annotation):  # Port | None, list[Count]: the bounds are on the member
        found += [rule for info in getattr(member, "__metadata__", ()) for rule in getattr(info, "metadata", [info])]
    parts = sorted((list(_BOUNDS).index(name), f"{_BOUNDS[name]} {_plain(getattr(rule, name))}")
                   for rule in found for name in _BOUNDS if hasattr(rule, name))
    return f"({', '.join(part for _, part in parts)})" if parts else ""


def test_every_key_is_documented_with_its_bounds():
    from pathlib import Path

    reference = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    rows = {line.split("`")[1]: line for line in reference.splitlines() if line.startswith("| `")}
    missing = [key for key, _ in _keys(Config) if key not in rows]
    assert not missing, f"docs/configuration.md lacks {missing}"
    unbounded = [f"{key} {_bounds(field)}" for key, field in _keys(Config) if _bounds(field) not in rows[key]]
    assert not unbounded, f"docs/configuration.md does not give these keys' bounds: {unbounded}"
    assert len(list(_keys(Config))) > 25
    assert _bounds(Config.model_fields["training"].annotation.model_fields["metrics_port"]) == "(>= 0, <= 65535)"


def test_expressions_are_checked_when_the_file_is_read():
    with pytest.raises(ConfigError) as caught:
        config_from_dict({
            "dataset": {"define": {"x": "exec('1')"}, "cuts": ["MET_pt >"]},
            "features": {"derived": [{"name": "HT", "expr": "sum(Jet_pt).real"}]},
        })
    message = str(caught.value)
    assert "dataset.define: expression \"exec('1')\": unknown function 'exec'" in message
    assert "dataset.cuts: expression \"MET_pt >\": not valid syntax" in message
    assert "features.derived.0.expr:" in message and "Attribute" in message


def test_model_kinds_take_their_own_keys_and_mlp_is_the_default():
    assert config_from_dict({"model": {"hidden": [8]}}).model.kind == "mlp"
    deepsets = config_from_dict({"model": {"kind": "deepsets", "set_hidden": [4], "hidden": [8]}}).model
    assert (deepsets.set_hidden, deepsets.hidden) == ([4], [8])
    assert config_from_dict({"model": {"kind": "arf", "options": {"n_models": 3}}}).model.options == {"n_models": 3}
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"model": {"kind": "logistic", "hidden": [8], "classes": 1}})
    message = str(caught.value)
    assert "model.hidden: unknown key" in message and "model.classes:" in message
    with pytest.raises(ConfigError, match="model.kind: Input should be 'mlp', 'deepsets'"):
        config_from_dict({"model": {"kind": "transformer"}})
    with pytest.raises(ConfigError, match="model.factory: Field required"):
        config_from_dict({"model": {"kind": "user"}})
    with pytest.raises(ConfigError, match="model.factory: .*'nodots' is not 'package.module:function'"):
        config_from_dict({"model": {"kind": "user", "factory": "nodots"}})


def test_every_registered_kind_names_a_builder_path_and_its_own_section():
    from hepstream.model_kinds import MODEL_KINDS, ModelKind, MLPConfig

    for kind in MODEL_KINDS.values():
        assert kind.builder.count(":") == 1, kind
    with pytest.raises(ValueError, match="MLPConfig.kind does not allow it"):
        ModelKind("deepsets", MLPConfig, "x:y")


def test_stored_model_sections_of_older_versions_still_read():
    from hepstream.model_kinds import stored_model_config

    old = {"name": "m", "kind": "logistic", "classes": 2, "hidden": [64, 64], "dropout": 0.0,
           "set_hidden": [32, 32], "factory": None, "options": {"l2": 0.1}}
    assert stored_model_config(old).model_dump() == {"name": "m", "classes": 2, "kind": "logistic",
                                                     "options": {"l2": 0.1}}


def test_flat_serve_keys_of_older_files_move_to_their_sections_with_a_warning():
    with pytest.warns(FutureWarning) as caught:
        serve = config_from_dict({"serve": {"port": 8100, "haproxy": True, "max_batch_size": 4,
                                            "http": {"host": "0.0.0.0"}}}).serve
    assert sorted(str(w.message) for w in caught) == ["serve.haproxy is deprecated: write serve.ray.haproxy",
                                                      "serve.max_batch_size is deprecated: write serve.batching.max_size",
                                                      "serve.port is deprecated: write serve.http.port"]
    assert (serve.http.host, serve.http.port, serve.ray.haproxy, serve.batching.max_size) == ("0.0.0.0", 8100, True, 4)
    with pytest.raises(ConfigError, match="serve.port and serve.http.port are the same setting"):
        config_from_dict({"serve": {"port": 8100, "http": {"port": 8200}}})


def test_serve_sections_report_problems_by_their_dotted_keys():
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"serve": {"http": {"port": -1}, "scaling": {"autoscaling": {"min_replicas": 5,
                                                                                      "max_replicas": 2}}}})
    message = str(caught.value)
    assert "serve.http.port:" in message and "serve.scaling.autoscaling.min_replicas: 5 exceeds" in message
