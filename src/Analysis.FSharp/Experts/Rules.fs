/// Has a model learned the toy language's rules? Where a rule fixes the next token, the top prediction is
/// scored against what the rule allows: after a subject noun, a verb of the same number (any of the six);
/// inside a count, the next digit or ")" (the count's length is random); after the object noun, ".".
module MechInterp.Analysis.Experts.Rules

open TorchSharp
open MechInterp.Data

/// The rules scored, by their names in ToyLanguage.NextRules.
let rules = [ "agreement"; "counting"; "end_of_sentence" ]

let private ruleId (name: string) = int64 (Array.findIndex ((=) name) ToyLanguage.NextRules)

let private scalar (x: int64) = TorchSharp.Scalar.op_Implicit x

/// Accuracy of the top prediction on every rule's positions: one value per rule, a scalar for an ordinary model's
/// logits [batch, pos, vocab], one per instance [instance] for a batched model's [instance, batch, pos, vocab].
let accuracies (logits: torch.Tensor) (batch: TokenBatch) : Map<string, torch.Tensor> =
    let pos = logits.shape.[logits.shape.Length - 2]
    let take (t: torch.Tensor) = t.narrow(-1L, 0L, pos - 1L)                       // positions with a next token
    let predicted = logits.narrow(-2L, 0L, pos - 1L).argmax(-1L)                   // [.., batch, pos − 1]
    let token = take batch.Tokens
    let rule = take batch.Labels.["next_rule"]
    let number = take batch.Labels.["number"]                                      // 1 singular, 2 plural
    let between (lo: torch.Tensor) (hi: torch.Tensor) = predicted.ge(lo).logical_and(predicted.lt(hi))
    let verbStart = number.sub(scalar 1L).mul(scalar (int64 ToyLanguage.VerbsPerNumber)).add(scalar (int64 ToyLanguage.FirstVerb))
    let nextDigit =
        token.sub(scalar (int64 ToyLanguage.FirstDigit)).add(scalar 1L).remainder(scalar (int64 ToyLanguage.Digits))
            .add(scalar (int64 ToyLanguage.FirstDigit))
    let allowed =
        [ "agreement", between verbStart (verbStart.add(scalar (int64 ToyLanguage.VerbsPerNumber)))
          "counting", predicted.eq(nextDigit).logical_or(predicted.eq(scalar (int64 ToyLanguage.Close)))
          "end_of_sentence", predicted.eq(scalar (int64 ToyLanguage.Period)) ]
    let dims = if logits.dim() = 4L then [| 1L; 2L |] else [| 0L; 1L |]
    allowed
    |> List.map (fun (name, correct) ->
        let mask = rule.eq(scalar (ruleId name))
        let hits = correct.logical_and(mask).to_type(torch.float32).sum(dims)
        name, hits.div(mask.to_type(torch.float32).sum(dims).clamp_min(TorchSharp.Scalar.op_Implicit 1.0f)))
    |> Map.ofList

/// The lowest of the rule accuracies (the learned criterion reads it): a scalar, or [instance].
let minimumAccuracy (accuracy: Map<string, torch.Tensor>) =
    torch.stack([| for r in rules -> accuracy.[r] |]).min(0L) |> fun struct (values, _) -> values
