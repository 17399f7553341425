"""benchmarks/profile_step.py's kernel categories (its GPU run is in gpu_check.sh): the step's
kernels by the names PyTorch, cuDNN and ndarts' Triton kernels give them."""

import pytest


@pytest.mark.parametrize("name,category", [
    ("void at::native::(anonymous namespace)::conv_depthwise2d_grad_weight_kernel<float, float>(...)",
     "depthwise conv weight gradient (PyTorch)"),
    ("void at::native::(anonymous namespace)::conv_depthwise2d_forward_kernel<5, float, int>(...)",
     "depthwise conv forward (PyTorch)"),
    ("_dw_conv_bwd_weight_kernel", "depthwise conv weight gradient (Triton)"),
    ("_pw_conv_kernel", "pointwise conv forward, input gradient (Triton)"),
    ("_pw_conv_wgrad_reduce_kernel", "pointwise conv weight gradient (Triton)"),
    ("_bn_grad_apply_kernel", "BatchNorm (Triton)"),
    ("_group_backward_kernel", "mixed sums (Triton)"),
    ("sm90_xmma_wgrad_implicit_gemm_indexed_f32f32_tf32f32", "other convs, weight gradient (cuDNN)"),
    ("cudnn::detail::dgrad2d_grouped_direct_kernel", "other convs, input gradient (cuDNN)"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "element-wise (PyTorch)"),
    ("something_new", "other"),
])
def test_kernel_categories(name, category):
    profile_step = pytest.importorskip("profile_step")
    assert profile_step.kernel_category(name) == category


def test_the_json_is_written_after_each_variant(tmp_path, monkeypatch):
    """A profile cut off by gpu_check.sh's limit (SIGINT: KeyboardInterrupt) keeps the variants it
    finished: the JSON is rewritten after each one, whole."""
    import json

    import torch

    profile_step = pytest.importorskip("profile_step")

    def fake_profile(impl, top, graph_kernels=False):
        if impl == "cut":
            raise KeyboardInterrupt
        return {"impl": impl, "kernels": 3, "busy_ms": 1.0, "wall_ms_unprofiled": 2.0, "top": [], "by_category": {}}

    monkeypatch.setattr(profile_step, "profile_impl", fake_profile)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    path = tmp_path / "profile.json"
    with pytest.raises(KeyboardInterrupt):
        profile_step.main(["--impl", "fused", "plain", "cut", "fused_sepconv", "--json", str(path)])
    assert [r["impl"] for r in json.loads(path.read_text())] == ["fused", "plain"]
    assert not (tmp_path / "profile.json.tmp").exists()
