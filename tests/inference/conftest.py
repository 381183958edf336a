"""An export of the tiny MaX-DeepLab (tests/export/tiny_model.py), made once
for the Predictor and predict tests."""

import pytest


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """(model, config, export root, version folder) at global step 3."""
    from max_deeplab_tf import export
    from tests.export import tiny_model

    config = tiny_model.config()
    model = tiny_model.build(config)
    root = str(tmp_path_factory.mktemp("tiny_export") / "export")
    version = export.export_saved_model(model, config, root, global_step=3)
    return model, config, root, version
