/// Ablations: replace one hook's activation (or one head's slice of it) by zero, by its mean over
/// the batch, or by the activation of a different input (resampling), and run the model.
module MechInterp.Analysis.Patching.Ablation

open System
open TorchSharp
open MechInterp.Hooks
open MechInterp.Model

type Ablation =
    /// The activation becomes zero.
    | Zero
    /// The activation becomes its mean over the batch (the same at every batch entry).
    | Mean
    /// Each batch entry gets the activation of another entry: a cyclic shift by 1 + seed mod (batch − 1).
    | Resample of seed: int
    /// The activation is taken from a run on other inputs (same shape), e.g. a reference batch.
    | ResampleFrom of source: torch.Tensor

/// The axis that indexes heads in an activation at this hook: 1 for patterns and scores, 2 for q, k, v, z, result.
let headAxis (hookName: string) =
    if hookName.EndsWith "hook_pattern" || hookName.EndsWith "hook_attn_scores" then 1L else 2L

/// A boolean mask broadcastable to `act` that is true on one index of one axis.
let internal oneIndexMask (act: torch.Tensor) (axis: int64) (index: int) (what: string) =
    let size = act.shape.[int axis]
    if index < 0 || int64 index >= size then
        invalidArg what $"{what} {index} is out of range: the activation has {size} along axis {axis}"
    let shape = Array.init (int (act.dim())) (fun i -> if int64 i = axis then size else 1L)
    let mask = torch.zeros(shape, dtype = torch.ScalarType.Bool)
    mask.index_fill_(axis, torch.tensor([| int64 index |]), true)

/// What the activation is replaced with under an ablation.
let replacement (ablation: Ablation) (act: torch.Tensor) =
    match ablation with
    | Zero -> torch.zeros_like act
    | Mean -> act.mean([| 0L |], keepdim = true).expand_as(act)
    | Resample seed ->
        let batch = act.shape.[0]
        if batch < 2 then invalidArg (nameof act) $"resample ablation needs a batch of at least 2 inputs, got {batch}"
        let shift = 1L + int64 (abs (seed % int (batch - 1L)))
        act.roll(shift, 0L)
    | ResampleFrom source ->
        if source.shape <> act.shape then
            invalidArg (nameof source)
                $"the resample source is [{String.Join(',', source.shape)}] but the activation is [{String.Join(',', act.shape)}]"
        source

/// A hook that ablates `hookName`, or only head `head` of it when given.
let ablationHook (ablation: Ablation) (hookName: string) (head: int option) =
    Hook(hookName, HookFn(fun act _ ->
        let replaced = replacement ablation act
        match head with
        | None -> replaced
        | Some h -> torch.where(oneIndexMask act (headAxis hookName) h "head", replaced, act)))

/// Logits [batch, pos, vocab] with the ablation applied.
let runAblated (model: HookedTransformer) (tokens: torch.Tensor) (ablation: Ablation) (hookName: string) (head: int option) =
    model.RunWithHooks(tokens, ablationHook ablation hookName head)
