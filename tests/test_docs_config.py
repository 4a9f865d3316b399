"""docs/configuration.md is generated from the config models and must be up to date."""

from progrl import docgen


def test_configuration_reference_is_up_to_date():
    text = docgen.render()
    assert docgen.DOC_PATH.read_text() == text, "docs/configuration.md is out of date: run python -m progrl.docgen"


def test_every_config_key_has_a_default_and_a_meaning():
    from progrl.config import TrainConfig

    text = docgen.render()
    assert not docgen.undocumented(text), "fields without a description or comment:\n" + "\n".join(
        docgen.undocumented(text))
    # every leaf key of the config appears as a row
    def keys(model, prefix=""):
        for name, field in model.model_fields.items():
            sub = docgen._sub_model(field.annotation)
            yield from keys(sub, f"{prefix}{name}.") if sub else [f"{prefix}{name}"]

    for key in keys(TrainConfig):
        assert f"| `{key}` |" in text, key
    for key in ("rollout.stop", "rollout.on_truncated", "log.report_to", "task_options.path",
                "task_options.eval_path", "task_options.prompt_column"):
        assert f"| `{key}` |" in text, key


def test_check_mode_fails_on_a_stale_file(tmp_path):
    stale = tmp_path / "configuration.md"
    stale.write_text("old\n")
    assert docgen.main(["--check", "--out", str(stale)]) == 1
    assert docgen.main(["--out", str(stale)]) == 0 and docgen.main(["--check", "--out", str(stale)]) == 0
