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
    if pattern.dim() <> 4L then
        invalidArg (nameof pattern) $"a pattern must be [batch, head, query, key], got [{System.String.Join(',', pattern.shape)}]"

/// Mean attention on the key `offset` positions back from each query (query ≥ firstQuery) → [head].
/// offset 1 is the previous-token score.
let diagonalScore (pattern: torch.Tensor) (offset: int) (firstQuery: int) =
    checkPattern pattern
    let n = pattern.shape.[2]
    let first = max (int64 firstQuery) (int64 offset)
    if offset < 0 || first >= n then
        invalidArg (nameof offset) $"offset {offset} from query {firstQuery} leaves no query in a sequence of {n}"
    // The diagonal key = query − offset of the [query, key] matrix, from query `first` on.
    let diag = pattern.diagonal(-int64 offset, 2L, 3L)           // [batch, head, n − offset], query = offset + i
    diag.narrow(2L, first - int64 offset, n - first).mean([| 0L; 2L |])

/// Previous-token score of every head of one pattern: mean attention from each query q ≥ 1 to q − 1.
let previousTokenScore (pattern: torch.Tensor) = diagonalScore pattern 1 1

/// Induction score on sequences that repeat with period `period` (BOS, r, r: period = half length):
/// mean attention from each query q in the repeat to q − period + 1, the token after q's earlier copy.
let inductionScore (period: int) (pattern: torch.Tensor) =
    if period < 2 then invalidArg (nameof period) $"period must be at least 2, got {period}"
    diagonalScore pattern (period - 1) (period + 1)

/// The names the scores read, for RunWithCache's filter.
let patternNames (model: HookedTransformer) =
    [ for l in 0 .. model.Config.n_layers - 1 -> $"blocks.{l}.attn.hook_pattern" ]

/// One score per [layer, head] from the cached patterns.
let scoreHeads (name: string) (score: torch.Tensor -> torch.Tensor) (model: HookedTransformer) (cache: ActivationCache) =
    let cfg = model.Config
    let values = Array2D.zeroCreate cfg.n_layers cfg.n_heads
    for l in 0 .. cfg.n_layers - 1 do
        use s = score cache.[$"blocks.{l}.attn.hook_pattern"]
        let row = s.data<float32>().ToArray()
        for h in 0 .. cfg.n_heads - 1 do values.[l, h] <- float row.[h]
    { Name = name
      Layers = [| for l in 0 .. cfg.n_layers - 1 -> $"L{l}" |]
      Heads = [| for h in 0 .. cfg.n_heads - 1 -> $"H{h}" |]
      Values = values }

/// The head with the highest score: (layer, head, score).
let best (table: HeadScoreTable) =
    seq { for l in 0 .. Array2D.length1 table.Values - 1 do
            for h in 0 .. Array2D.length2 table.Values - 1 -> l, h, table.Values.[l, h] }
    |> Seq.maxBy (fun (_, _, v) -> v)
