/// Reading the residual stream in vocabulary space: the logit lens, and direct logit attribution of
/// each component (or head) to a linear logit metric such as a logit difference.
module MechInterp.Analysis.Residual.LogitAttribution

open TorchSharp
open MechInterp.Hooks
open MechInterp.Model
open MechInterp.Analysis.Residual.Decomposition

/// A linear function of the logits: metric[b, p] = Σ_v Coefficients[b, p, v] · logits[b, p, v].
/// A logit difference is +1 on the right token and −1 on the wrong one.
type LogitMetric = { Coefficients: Tensor }

let private checkTokens (name: string) (t: Tensor) =
    if t.dim() <> 2L then invalidArg name $"{name} must be [batch, pos], got [{System.String.Join(',', t.shape)}]"

/// logit[correct] − logit[incorrect] at every [batch, pos].
let logitDifference (model: HookedTransformer) (correct: Tensor) (incorrect: Tensor) =
    checkTokens (nameof correct) correct
    checkTokens (nameof incorrect) incorrect
    let v = int64 model.Config.d_vocab
    let hot (t: Tensor) = torch.nn.functional.one_hot(t, v).to_type(torch.float32)
    { Coefficients = hot correct - hot incorrect }

/// logit[correct] minus the mean logit over the vocabulary: how much the stream favours the right token.
let correctMinusMean (model: HookedTransformer) (correct: Tensor) =
    checkTokens (nameof correct) correct
    let v = int64 model.Config.d_vocab
    { Coefficients = torch.nn.functional.one_hot(correct, v).to_type(torch.float32) - (1.0f / float32 v) }

/// The metric evaluated on logits [batch, pos, vocab] → [batch, pos].
let evaluate (metric: LogitMetric) (logits: Tensor) =
    if logits.shape <> metric.Coefficients.shape then
        invalidArg (nameof logits)
            $"logits [{System.String.Join(',', logits.shape)}] do not match the metric's [{System.String.Join(',', metric.Coefficients.shape)}]"
    (logits * metric.Coefficients).sum(-1L)

/// The final norm's weight, or ones when it has none.
let private lnWeight (model: HookedTransformer) =
    match model.ln_final.w with
    | null -> torch.ones(int64 model.Config.d_model)
    | w -> w.detach()

/// Direct logit attribution: each component's contribution to the metric with the final norm's scale frozen,
/// [component, batch, pos]. A last row "bias" holds the constant part (ln_final.b and b_U), so the rows
/// sum to the metric of the real logits.
let directAttribution (model: HookedTransformer) (cache: ActivationCache) (stack: ResidualStack) (metric: LogitMetric) =
    let scaled = applyLnToStack model cache stack
    let wU = model.unembed.W_U.detach()                                       // [d_model, vocab]
    let direction = metric.Coefficients.matmul(wU.t()) * lnWeight model       // [batch, pos, d_model]
    let perComponent = (scaled.Stack * direction.unsqueeze(0)).sum(-1L)       // [component, batch, pos]
    let constantLogits =
        match model.ln_final.b with
        | null -> model.unembed.b_U.detach()
        | b -> b.detach().matmul(wU) + model.unembed.b_U.detach()           // [vocab]
    let bias = (metric.Coefficients * constantLogits).sum(-1L)               // [batch, pos]
    { Labels = Array.append scaled.Labels [| "bias" |]
      Stack = torch.cat([| perComponent; bias.unsqueeze(0) |], 0L) }

/// The logit lens: each accumulated residual stream put through the final norm (with its own statistics,
/// as if the model ended there) and the unembedding → [layer, batch, pos, vocab]. The last entry is the logits.
let logitLens (model: HookedTransformer) (cache: ActivationCache) =
    let acc = accumulatedResid model cache false
    use _ = torch.no_grad()
    let normed = model.ln_final.Normalize(acc.Stack)                          // [layer, batch, pos, d_model]
    { Labels = acc.Labels
      Stack = normed.matmul(model.unembed.W_U.detach()) + model.unembed.b_U.detach() }

/// Next-token cross-entropy of each logit-lens layer on the positions a mask [batch, pos − 1] selects → one per layer.
let logitLensLoss (model: HookedTransformer) (cache: ActivationCache) (tokens: Tensor) (mask: Tensor) =
    let lens = logitLens model cache
    let losses =
        [| for i in 0 .. lens.Labels.Length - 1 ->
               MechInterp.Training.Losses.Masked(lens.Stack.[int64 i], tokens, mask).item<float32>() |> float |]
    Array.zip lens.Labels losses
