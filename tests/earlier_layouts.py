"""Checkpoints as earlier versions of ndarts wrote them, for the tests that load them."""
import torch


def old_grouped_layout(model_state: dict, optimizer_state: dict | None = None) -> dict:
    """A grouped search-network state_dict as the layout before 2026-11-29 wrote it (the first
    depthwise conv's channels c·E + e, ``pw1`` an [E, C, C] tensor); with optimizer_state (over the
    weights, as the search's SGD), its momentum buffers rewritten alike, in place. Returns the state."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    names = [k for k in model_state if not k.endswith(buffers) and not k.startswith("alphas_")]
    index = {n: i for i, n in enumerate(names)}
    converted = {}  # new key → (old key, tensor)

    def pw1(t, E, C):
        return t.reshape(E, C, C)

    def dw1(t, E, C):
        return t.reshape(E, C, *t.shape[1:]).transpose(0, 1).reshape(t.shape)

    for key in [k for k in model_state if k.endswith(".pw1.weight")]:
        stack = key[:-len("pw1.weight")]
        EC, C = model_state[key].shape[:2]
        E = EC // C
        for name, old_name, convert in ((key, f"{stack}pw1", pw1), (f"{stack}dw1.weight", f"{stack}dw1.weight", dw1)):
            converted[name] = (old_name, convert(model_state[name], E, C))
            if optimizer_state is not None:
                state = optimizer_state["state"].get(index[name])
                for k, v in (state or {}).items():
                    if isinstance(v, torch.Tensor) and v.shape == model_state[name].shape:
                        state[k] = convert(v, E, C)
    # the keys in registration order, as a state_dict has them (an optimizer's state follows it)
    return dict(converted.get(k, (k, v)) for k, v in model_state.items())
