/// The standard SAE of Anthropic's April 2024 update: f = ReLU(pre), and a sparsity penalty on
/// f_i · ‖W_dec,i‖ so that shrinking decoder rows cannot buy a smaller L1.
module MechInterp.Analysis.Dictionary.StandardSae

open TorchSharp

type Tensor = torch.Tensor

/// pre [batch, d_sae] → f [batch, d_sae].
let activate (pre: Tensor) = pre.relu()

/// Σ_i f_i ‖W_dec,i‖ per input, averaged over the batch; W_dec [d_sae, d_in].
let penalty (acts: Tensor) (wDec: Tensor) =
    let rowNorms = wDec.norm(1, false)                    // [d_sae]
    acts.mul(rowNorms).sum(-1L).mean()
