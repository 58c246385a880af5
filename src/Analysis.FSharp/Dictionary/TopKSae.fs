/// TopK and BatchTopK: sparsity by selection instead of a penalty. TopK keeps each input's k largest
/// pre-activations; BatchTopK keeps the k × batch largest of the whole batch, so an input may use more or
/// fewer than k, and at inference uses one threshold learned as the running mean of the smallest kept value.
module MechInterp.Analysis.Dictionary.TopKSae

open TorchSharp

type Tensor = torch.Tensor

/// pre [batch, d_sae] → f [batch, d_sae] with at most k non-zero per row (ReLU after the selection, as SAELens).
let activate (k: int) (pre: Tensor) =
    let struct (values, indexes) = pre.topk(k, dim = -1)
    torch.zeros_like(pre).scatter(-1L, indexes, values.relu())

/// BatchTopK in training: the k × batch largest ReLU pre-activations of the batch, kept in place.
let activateBatch (k: int) (pre: Tensor) =
    let flat = pre.relu().flatten()                          // [batch · d_sae]
    let keep = min flat.shape.[0] (int64 k * pre.shape.[0])
    let struct (values, indexes) = flat.topk(int keep)
    torch.zeros_like(flat).scatter(0L, indexes, values).view_as(pre)

/// The smallest positive kept value of a BatchTopK batch (the threshold's estimate from this batch), or None.
let smallestKept (acts: Tensor) =
    use positive = acts.gt(sc 0.0)
    if positive.any().item<bool>() then Some(float (acts.masked_select(positive).min().item<float32>())) else None

/// BatchTopK (and JumpReLU) at inference: pre where it exceeds the threshold, else 0; threshold [d_sae].
let activateThreshold (threshold: Tensor) (pre: Tensor) =
    pre.mul(pre.gt(threshold).to_type(pre.dtype))
