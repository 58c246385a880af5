/// SAELens's evaluation metrics of an SAE on a set of activations x [tokens, d_in]:
///   L0: mean number of non-zero latents per input;
///   MSE: the mean over all elements of (x − x̂)², as SAELens reports it;
///   explained variance: 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², x̄ the mean input;
///   cosine similarity: the mean over inputs of cos(x, x̂);
///   firing frequency of each latent, with dead latents (never fired) and dense ones (fired on more than
///   `denseFrequency` of the inputs).
module MechInterp.Analysis.Dictionary.SaeMetrics

open System
open TorchSharp

type Tensor = torch.Tensor

/// Latents firing on more than this fraction of inputs count as dense (SAELens's feature-density plots mark 10^-1).
let denseFrequency = 0.1

type Reconstruction =
    { L0: float
      Mse: float
      ExplainedVariance: float
      CosineSimilarity: float
      /// Per latent: the fraction of inputs it fired on.
      Frequency: float[]
      Dead: int
      Dense: int
      Inputs: int }

/// The metrics of a reconstruction x̂ with latents f of inputs x ([tokens, d_in], [tokens, d_sae]).
let ofReconstruction (x: Tensor) (xHat: Tensor) (f: Tensor) : Reconstruction =
    if x.shape <> xHat.shape then
        invalidArg (nameof xHat) $"""x̂ has shape [{String.Join(", ", xHat.shape)}], x has [{String.Join(", ", x.shape)}]"""
    use _scope = torch.NewDisposeScope()
    let x : Tensor = x.to_type(torch.float64).reshape(-1L, x.shape.[x.shape.Length - 1])
    let xHat : Tensor = xHat.to_type(torch.float64).reshape(x.shape)
    let f = f.reshape(x.shape.[0], -1L)
    let value (t: Tensor) = t.item<float>()
    let fired = f.gt(sc 0.0)
    let frequency = fired.to_type(torch.float64).mean([| 0L |]).data<float>().ToArray()
    let residual = x.sub(xHat).square().sum()
    let total = x.sub(x.mean([| 0L |], true)).square().sum()
    let cos = torch.nn.functional.cosine_similarity(x, xHat, 1L, 1e-8)
    { L0 = value (fired.to_type(torch.float64).sum(-1L).mean())
      Mse = value (x.sub(xHat).square().mean())
      ExplainedVariance = 1.0 - value residual / value total
      CosineSimilarity = value (cos.mean())
      Frequency = frequency
      Dead = frequency |> Array.filter (fun p -> p = 0.0) |> Array.length
      Dense = frequency |> Array.filter (fun p -> p > denseFrequency) |> Array.length
      Inputs = int x.shape.[0] }

/// The metrics of `sae` on inputs x [tokens, d_in].
let evaluate (sae: Sae) (x: Tensor) : Reconstruction =
    use _scope = torch.NewDisposeScope()
    use _noGrad = torch.no_grad()
    let f = sae.Encode x
    ofReconstruction x (sae.Decode f) f
