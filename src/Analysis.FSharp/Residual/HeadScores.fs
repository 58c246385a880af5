/// Per-head scores read off attention patterns: how much each head attends to the previous token,
/// and how much it does induction (attends to the token after the earlier copy of the current one).
module MechInterp.Analysis.Residual.HeadScores

open TorchSharp
open MechInterp.Hooks
open MechInterp.Model

/// Scores per [layer, head], with the labels of both axes.
type HeadScoreTable =
    { Name: string
      Layers: string[]
      Heads: string[]
      Values: float[,] }

let private checkPattern (pattern: torch.Tensor) =
    if pattern.dim() <> 4L && pattern.dim() <> 5L then
        invalidArg (nameof pattern) $"a pattern must be [batch, head, query, key] (or [instance, batch, head, query, key]), got [{System.String.Join(',', pattern.shape)}]"

/// Mean attention on the key `offset` positions back from each query (query ≥ firstQuery) → [head]
/// ([instance, head] for a batched model's pattern). offset 1 is the previous-token score.
let diagonalScore (pattern: torch.Tensor) (offset: int) (firstQuery: int) =
    checkPattern pattern
    let n = pattern.shape.[pattern.shape.Length - 2]
    let first = max (int64 firstQuery) (int64 offset)
    if offset < 0 || first >= n then
        invalidArg (nameof offset) $"offset {offset} from query {firstQuery} leaves no query in a sequence of {n}"
    // The diagonal key = query − offset of the [query, key] matrix, from query `first` on.
    let diag = pattern.diagonal(-int64 offset, -2L, -1L)           // [.., batch, head, n − offset], query = offset + i
    // Every sequence counts the same queries, so the mean over queries, then over the batch, is the mean over both.
    diag.narrow(-1L, first - int64 offset, n - first).mean([| -1L |]).mean([| -2L |])

/// Previous-token score of every head of one pattern: mean attention from each query q ≥ 1 to q − 1.
let previousTokenScore (pattern: torch.Tensor) = diagonalScore pattern 1 1

/// Induction score on sequences that repeat with period `period` (BOS, r, r: period = half length):
/// mean attention from each query q in the repeat to q − period + 1, the token after q's earlier copy.
let inductionScore (period: int) (pattern: torch.Tensor) =
    if period < 2 then invalidArg (nameof period) $"period must be at least 2, got {period}"
    diagonalScore pattern (period - 1) (period + 1)

/// Mean attention from each query to a key given per (sequence, query) → [head] ([instance, head] batched):
/// keys [batch, query] ([instance, batch, query]), −1 where the query does not count. How induction is scored
/// when the period varies per sequence (InductionTask.InductionKeys gives the keys).
let attentionTo (keys: torch.Tensor) (pattern: torch.Tensor) =
    checkPattern pattern
    let shape = pattern.shape
    let r = shape.Length
    let lead = shape.[.. r - 4]                                                          // [(instance,) batch]
    let h, q = shape.[r - 3], shape.[r - 2]
    if keys.shape <> Array.append lead [| q |] then
        invalidArg (nameof keys) $"keys must be [{System.String.Join(',', Array.append lead [| q |])}] ((instance,) batch, query), got [{System.String.Join(',', keys.shape)}]"
    let zero = TorchSharp.Scalar.op_Implicit 0L
    let counted = keys.ge(zero)                                                          // [.., batch, query]
    let perRun = counted.sum([| -1L; -2L |]).to_type(torch.float32)                      // [(instance)]: counted queries
    if perRun.eq(TorchSharp.Scalar.op_Implicit 0.0f).any().item<bool>() then
        invalidArg (nameof keys) "no query has a key (every key is -1)"
    let index = keys.clamp_min(zero).unsqueeze(-2L).unsqueeze(-1L).expand(Array.concat [ lead; [| h; q; 1L |] ])   // [.., batch, head, query, 1]
    let onKey = pattern.gather(-1L, index).squeeze(-1L)                                 // [.., batch, head, query]
    let total = (onKey * counted.unsqueeze(-2L).to_type(onKey.dtype)).sum([| -1L |]).sum([| -2L |])   // [.., head]
    total.div(perRun.unsqueeze(-1L))

/// The names the scores read, for RunWithCache's filter.
let patternNames (model: HookedTransformer) =
    [ for l in 0 .. model.Config.n_layers - 1 -> (HookNames.Pattern l) ]

let private table (name: string) (cfg: DecoderConfig) (values: float[,]) =
    { Name = name
      Layers = [| for l in 0 .. cfg.n_layers - 1 -> $"L{l}" |]
      Heads = [| for h in 0 .. cfg.n_heads - 1 -> $"H{h}" |]
      Values = values }

/// One score per [layer, head] from the cached patterns.
let scoreHeads (name: string) (score: torch.Tensor -> torch.Tensor) (model: HookedTransformer) (cache: ActivationCache) =
    let cfg = model.Config
    let values = Array2D.zeroCreate cfg.n_layers cfg.n_heads
    for l in 0 .. cfg.n_layers - 1 do
        use s = score cache.[(HookNames.Pattern l)]
        let row = s.data<float32>().ToArray()
        for h in 0 .. cfg.n_heads - 1 do values.[l, h] <- float row.[h]
    table name cfg values

/// One table per instance from a batched model's cached patterns [instance, batch, head, query, key]: the
/// score runs once on all instances (it must return [instance, head]).
let scoreHeadsByInstance (name: string) (score: torch.Tensor -> torch.Tensor) (model: HookedTransformer) (cache: ActivationCache) =
    let cfg = model.Config
    let n = model.Instances |> Option.ofNullable |> Option.defaultWith (fun () -> invalidArg (nameof model) "scoreHeadsByInstance reads a batched model's cache")
    let values = Array.init n (fun _ -> Array2D.zeroCreate cfg.n_layers cfg.n_heads)
    for l in 0 .. cfg.n_layers - 1 do
        use s = score cache.[(HookNames.Pattern l)]                             // [instance, head]
        let flat = s.data<float32>().ToArray()
        for i in 0 .. n - 1 do
            for h in 0 .. cfg.n_heads - 1 do values.[i].[l, h] <- float flat.[i * cfg.n_heads + h]
    values |> Array.map (table name cfg)

/// The head with the highest score: (layer, head, score).
let best (table: HeadScoreTable) =
    seq { for l in 0 .. Array2D.length1 table.Values - 1 do
            for h in 0 .. Array2D.length2 table.Values - 1 -> l, h, table.Values.[l, h] }
    |> Seq.maxBy (fun (_, _, v) -> v)
