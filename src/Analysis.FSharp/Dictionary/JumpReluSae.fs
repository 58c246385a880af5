/// JumpReLU (Rajamanoharan et al., 2024): f = pre · H(pre − θ) with a trained threshold θ = exp(log θ) per latent,
/// and an L0 penalty Σ H(pre − θ). H has zero gradient almost everywhere, so θ learns through the paper's
/// straight-through estimator: the pseudo-derivatives ∂H/∂θ = −K((pre − θ)/ε)/ε and ∂f/∂θ = −θ K((pre − θ)/ε)/ε
/// with the rectangle kernel K(u) = 1{|u| < 1/2} and bandwidth ε. Written as value.detach() + (s − s.detach()),
/// where the surrogate s carries exactly that gradient, so no custom autograd function is needed.
module MechInterp.Analysis.Dictionary.JumpReluSae

open TorchSharp

type Tensor = torch.Tensor

let private kernel (pre: Tensor) (threshold: Tensor) (bandwidth: float) =
    // K((pre − θ)/ε), constant for autograd.
    use u = pre.detach().sub(threshold.detach()).div(sc bandwidth)
    u.abs().lt(sc 0.5).to_type(pre.dtype)

/// Training forward: pre [batch, d_sae], threshold [d_sae] (a function of the trained log θ) → f.
let activate (bandwidth: float) (pre: Tensor) (threshold: Tensor) =
    let gate = pre.gt(threshold).to_type(pre.dtype).detach()
    use k = kernel pre threshold bandwidth
    // ∂/∂θ of s is −θ̄ K / ε (θ̄ detached): the pseudo-derivative of pre · H(pre − θ).
    let s = threshold.mul(threshold.detach()).mul(k).div(sc -bandwidth)
    pre.mul(gate).add(s.sub(s.detach()))

/// The L0 penalty per input, averaged over the batch: Σ_i H(pre_i − θ_i), with ∂/∂θ = −K / ε.
let penalty (bandwidth: float) (pre: Tensor) (threshold: Tensor) =
    let step = pre.gt(threshold).to_type(pre.dtype).detach()
    use k = kernel pre threshold bandwidth
    let s = threshold.mul(k).div(sc -bandwidth)
    step.add(s.sub(s.detach())).sum(-1L).mean()
