"""``comfyui.calls.Call``: arguments read and replaced by name, everything else forwarded as given, for the
call forms ComfyUI's wrappers and replaced functions receive (0.3.75's and 2026's)."""
from __future__ import annotations

from tpu_runtime.comfyui.calls import Call, positional_names


class _Executor:
    """Shaped like ``comfy.patcher_extension.WrapperExecutor``: ``original`` is what it ends in."""

    def __init__(self, original, class_obj=None):
        self.original, self.class_obj = original, class_obj
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.original(*args, **kwargs)


def prepare_sampling_2026(model, noise_shape, conds, model_options=None, force_full_load=False, force_offload=False):
    return (model, noise_shape, conds, model_options, force_full_load, force_offload)


class _Guider:
    def outer_sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                     disable_pbar=False, seed=None, latent_shapes=None, new_2027_option=None):
        return (noise, latent_image, sigmas, latent_shapes, new_2027_option)


def test_a_keyword_the_pack_does_not_know_reaches_comfyui_untouched():
    executor = _Executor(prepare_sampling_2026)
    call = Call.through(executor, ("model", (1, 4, 8, 8), {}), {"model_options": {}, "force_full_load": True,
                                                                "force_offload": True})
    assert call.get("noise_shape") == (1, 4, 8, 8) and call.get("force_full_load") is True
    assert call.forward(executor) == ("model", (1, 4, 8, 8), {}, {}, True, True)


def test_a_bound_method_is_read_without_self_and_replacements_stay_where_they_were_given():
    guider = _Guider()
    executor = _Executor(guider.outer_sample, guider)
    assert positional_names(guider.outer_sample)[:4] == ("noise", "latent_image", "sampler", "sigmas")
    call = Call.through(executor, ("noise", "latent", "sampler", "sigmas", None, None, False, 7),
                        {"latent_shapes": None, "new_2027_option": "kept"})
    assert call.get("sigmas") == "sigmas" and call.get("seed") == 7 and call.get("callback") is None
    call.set("sigmas", "host sigmas")
    call.set("latent_shapes", ["shape"])
    assert call.forward(executor) == ("noise", "latent", "host sigmas", ["shape"], "kept")
    args, kwargs = executor.calls[-1]
    assert args[3] == "host sigmas" and kwargs["latent_shapes"] == ["shape"]  # positional stays positional


def test_an_argument_not_given_reads_as_the_default_and_is_added_by_name():
    executor = _Executor(prepare_sampling_2026)
    call = Call.through(executor, ("model", (1,), {}), {})
    assert not call.given("model_options") and call.get("model_options", "default") == "default"
    call.set("model_options", {"a": 1})
    assert call.forward(executor)[3] == {"a": 1}


def test_an_uninspectable_function_uses_the_fallback_form():
    executor = _Executor(print)
    call = Call.through(executor, (1, 2), {}, fallback=("a", "b"))
    assert call.get("b") == 2
