"""Device helpers for (count, mean, M2) statistics, shared by the std and BatchNorm kernels.

Chan's parallel update: merging a tile's own (n_b, mean_b, M2_b) into running moments never forms
Σx and Σx², which cancel catastrophically in fp32 once |mean| ≫ std.
"""
import triton
import triton.language as tl


@triton.jit
def merge_tile(count, mean, m2, x, mask):
    """Running (count, mean, M2) updated with the masked fp32 tile x (1-D)."""
    n_b = tl.sum(mask.to(tl.float32), axis=0)
    mean_b = tl.sum(x, axis=0) / tl.maximum(n_b, 1.0)
    dev = tl.where(mask, x - mean_b, 0.0)
    m2_b = tl.sum(dev * dev, axis=0)
    total = count + n_b
    delta = mean_b - mean
    frac = n_b / tl.maximum(total, 1.0)
    return total, mean + delta * frac, m2 + m2_b + delta * delta * count * frac


@triton.jit
def store_moments(PART, index, count, mean, m2, mask=None):
    """Writes (count, mean, M2) to PART[index, 0:3] (index and the moments: scalars, or blocks of
    one shape stored where mask)."""
    tl.store(PART + index * 3 + 0, count, mask=mask)
    tl.store(PART + index * 3 + 1, mean, mask=mask)
    tl.store(PART + index * 3 + 2, m2, mask=mask)


@triton.jit
def row_moments(y, ok):
    """Each row's (count, mean, M2) of the fp32 tile y [R, P] over the mask ok (y's shape): the
    partial moments a kernel stores for the BatchNorm of the tensor it wrote."""
    count = tl.sum(ok.to(tl.float32), axis=1)
    mean = tl.sum(tl.where(ok, y, 0.0), axis=1) / tl.maximum(count, 1.0)
    dev = tl.where(ok, y - mean[:, None], 0.0)
    return count, mean, tl.sum(dev * dev, axis=1)
