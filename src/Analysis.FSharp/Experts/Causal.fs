/// Causal checks of a specialization claim, all on one held-out batch:
///  - ablation: zero expert e's gate (dense: zero neuron group e) and measure Δloss per feature category;
///  - forcing: send the tokens of one category to other experts and measure what it costs them;
///  - steering: add a category's mean-difference direction to the MoE input and watch routing move to its expert.
/// The loss at position p is the loss of predicting token p + 1, charged to the token at p, whose labels it takes.
module MechInterp.Analysis.Experts.Causal

open System
open TorchSharp
open MechInterp.Hooks
open MechInterp.Data
open MechInterp.Training
open MechInterp.Analysis.Experts.Subjects
open MechInterp.Analysis.Experts.Routing

/// One feature category: a column of the expert × feature tables.
type Column =
    { Feature: string
      Category: string
      Id: int }

let columnName (c: Column) = $"{c.Feature}={c.Category}"

/// Every category of every feature, features in name order.
let columns (features: Map<string, string[]>) =
    [ for KeyValue(feature, categories) in features do
          for i, c in Array.indexed categories -> { Feature = feature; Category = c; Id = i } ]

/// Labels of the positions that have a next-token loss (0 .. pos − 2), flattened like the losses.
let private lossLabels (sample: RoutingSample) (pos: int) =
    let keep = Array.init sample.Choice.Length id |> Array.filter (fun t -> sample.Position.[t] < pos - 1)
    keep, sample.Labels |> Map.map (fun _ labels -> keep |> Array.map (fun t -> labels.[t]))

/// Next-token loss per position [batch · (pos − 1)] with the subject's hooks and then `extra` attached.
let perTokenLoss (subject: Subject) (batch: TokenBatch) (extra: Hook[]) : float[] =
    use _scope = torch.NewDisposeScope()
    use _noGrad = torch.no_grad()
    let logits = subject.Model.RunWithHooks(batch.Tokens, Array.append (subject.HooksFor batch.Tokens) extra)
    Losses.PerPosition(logits, batch.Tokens).reshape(-1L).to_type(torch.float64).data<float>().ToArray()

let private meanWhere (values: float[]) (take: int -> bool) =
    let mutable sum, n = 0.0, 0
    for i in 0 .. values.Length - 1 do
        if take i then
            sum <- sum + values.[i]
            n <- n + 1
    if n = 0 then nan else sum / float n

/// The hooks that remove unit e of a layer: the routing held at the clean choice and expert e's weight set to 0,
/// so its gate is 0 where it was chosen and every other pair runs as before; for the dense model its neuron group
/// zeroed. `index` is the clean expert index [batch, pos, k].
let private ablationHooks (subject: Subject) (layer: int) (index: torch.Tensor) (unit: int) : Hook[] =
    match subject.Units with
    | Routed ->
        [| Hook(HookNames.ExpertWeights layer, HookFn(fun weights _ -> weights.index_fill(-1L, torch.tensor([| int64 unit |]), (0.0).ToScalar())))
           Hook(HookNames.ExpertIndices layer, HookFn(fun _ _ -> index)) |]
    | NeuronGroups groups ->
        [| Hook(HookNames.MlpPost layer, HookFn(fun post _ ->
            let width = post.shape.[2] / int64 groups
            let keep = torch.ones(post.shape.[2], dtype = post.dtype)
            keep.narrow(0L, int64 unit * width, width).zero_() |> ignore
            post.mul(keep))) |]

let private indexTensor (sample: RoutingSample) (batch: int) (pos: int) =
    let k = sample.Slots.[0].Length
    torch.tensor(sample.Slots |> Array.collect (Array.map int64)).view(int64 batch, int64 pos, int64 k)

/// Δloss per unit × column, and per feature the claimed-vs-other comparison.
type Ablation =
    { Layer: int
      Columns: Column list
      /// [unit, column]: mean over the column's tokens of loss(ablated) − loss(clean); NaN where the batch has none.
      DeltaLoss: float[,]
      /// feature → (mean Δloss on each unit's claimed category, mean Δloss on the feature's other tokens), over units.
      /// A unit claims the category it over-represents most (largest P(c | unit) / P(c)) in the same batch.
      Claimed: Map<string, float * float> }

/// The category of a feature a unit over-represents most, from its counts [unit, category]; None for an idle unit.
let claimOf (table: int[,]) (unit: int) =
    let row = table.[unit, *]
    if Array.sum row = 0 then None
    else
        let total = table |> Seq.cast<int> |> Seq.sum |> float
        let share c = float (Array.sum table.[*, c]) / total
        let n = float (Array.sum row)
        Some(Array.init row.Length id |> Array.filter (fun c -> share c > 0.0) |> Array.maxBy (fun c -> float row.[c] / n / share c))

let ablate (subject: Subject) (features: Map<string, string[]>) (batch: TokenBatch) (sample: RoutingSample) (stats: LayerStatistics) =
    let b, p = int batch.Tokens.shape.[0], int batch.Tokens.shape.[1]
    let _, labels = lossLabels sample p
    let cols = columns features
    let clean = perTokenLoss subject batch [||]
    use index = indexTensor sample b p
    let deltas =
        Array.init sample.Experts (fun unit ->
            let ablated = perTokenLoss subject batch (ablationHooks subject sample.Layer index unit)
            Array.map2 (-) ablated clean)
    let table =
        Array2D.init sample.Experts cols.Length (fun unit c ->
            let col = cols.[c]
            let l = labels.[col.Feature]
            meanWhere deltas.[unit] (fun t -> l.[t] = col.Id))
    let claimed =
        features
        |> Map.map (fun feature _ ->
            let l = labels.[feature]
            let pairs =
                [ for unit in 0 .. sample.Experts - 1 do
                      match claimOf stats.Tables.[feature] unit with
                      | Some c -> yield meanWhere deltas.[unit] (fun t -> l.[t] = c), meanWhere deltas.[unit] (fun t -> l.[t] <> c)
                      | None -> () ]
                |> List.filter (fun (a, o) -> Double.IsFinite a && Double.IsFinite o)
            if pairs.IsEmpty then nan, nan else List.averageBy fst pairs, List.averageBy snd pairs)
    { Layer = sample.Layer; Columns = cols; DeltaLoss = table; Claimed = claimed }

/// Forcing one category's tokens to other experts: Δloss on those tokens, and on an equally large random set of tokens forced the same way.
type Forcing =
    { Column: Column
      Tokens: int
      ForcedDelta: float
      RandomDelta: float }

/// A chosen token's expert weights rotate by a random shift in 1 .. E − 1 (expert e's weight moves to e + shift mod E),
/// so each of its k slots lands on another expert, the slots stay distinct and keep their gates; the choice is the
/// clean one shifted the same way (what a router would pick from the rotated weights, also under a hash router's
/// own hooks). shift: [batch, pos]; clean: the clean expert index [batch, pos, k].
let private forceHooks (layer: int) (experts: int) (shift: torch.Tensor) (clean: torch.Tensor) =
    let e = (int64 experts).ToScalar()
    [| Hook(HookNames.ExpertWeights layer, HookFn(fun weights _ ->
           let source = torch.arange(int64 experts).sub(shift.unsqueeze(-1L)).remainder(e)   // [batch, pos, E]: where each weight comes from
           weights.gather(-1L, source)))
       Hook(HookNames.ExpertIndices layer, HookFn(fun _ _ -> clean.add(shift.unsqueeze(-1L)).remainder(e))) |]

let force (rng: Random) (subject: Subject) (features: Map<string, string[]>) (batch: TokenBatch) (sample: RoutingSample) =
    match subject.Units with
    | NeuronGroups _ -> []
    | Routed ->
        let b, p = int batch.Tokens.shape.[0], int batch.Tokens.shape.[1]
        let keep, labels = lossLabels sample p
        let clean = perTokenLoss subject batch [||]
        use cleanIndex = indexTensor sample b p
        let e = sample.Experts
        // shift [batch, pos]: 0 for tokens left alone.
        let run (chosen: bool[]) =
            let shifts = Array.zeroCreate<int64> (b * p)
            keep |> Array.iteri (fun i t -> if chosen.[i] then shifts.[t] <- int64 (1 + rng.Next(e - 1)))
            use shift = torch.tensor(shifts).view(int64 b, int64 p)
            let forced = perTokenLoss subject batch (forceHooks sample.Layer e shift cleanIndex)
            meanWhere (Array.map2 (-) forced clean) (fun i -> chosen.[i])
        [ for col in columns features do
              let l = labels.[col.Feature]
              let chosen = l |> Array.map (fun x -> x = col.Id)
              let n = chosen |> Array.filter id |> Array.length
              if n > 0 then
                  let random = Array.zeroCreate keep.Length
                  Array.init keep.Length id |> Array.sortBy (fun _ -> rng.Next()) |> Array.truncate n
                  |> Array.iter (fun i -> random.[i] <- true)
                  yield { Column = col; Tokens = n; ForcedDelta = run chosen; RandomDelta = run random } ]

/// Steering towards a category: its direction is mean(resid_mid | category) − mean(resid_mid | rest) at the
/// MoE layer; Share.[i] is the share of the other tokens routed (top expert) to the category's expert at Alphas.[i].
type Steering =
    { Column: Column
      Expert: int
      Alphas: float[]
      Share: float[] }

let steer (alphas: float[]) (subject: Subject) (features: Map<string, string[]>) (batch: TokenBatch) (sample: RoutingSample) (stats: LayerStatistics) =
    match subject.Units with
    | NeuronGroups _ -> []
    | Routed ->
        use _scope = torch.NewDisposeScope()
        use _noGrad = torch.no_grad()
        let layer = sample.Layer
        let residName = HookNames.ResidMid layer
        let indexName = HookNames.ExpertIndices layer
        let struct (_, cache) = subject.Model.RunWithCache(batch.Tokens, (fun n -> n = residName), subject.HooksFor batch.Tokens)
        use cache = cache
        let d = cache.[residName].shape.[2]
        let resid = cache.[residName].reshape(-1L, d)                                        // [tokens, d_model]
        [ for col in columns features do
              let labels = sample.Labels.[col.Feature]
              let inside = labels |> Array.map (fun x -> x = col.Id)
              let n = inside |> Array.filter id |> Array.length
              if n > 0 && n < inside.Length then
                  let table = Specialization.expertGivenCategory stats.Tables.[col.Feature]   // [category, expert]
                  let target = Array.init sample.Experts id |> Array.maxBy (fun e -> table.[col.Id, e])
                  use mask = torch.tensor(inside).unsqueeze(1).to_type(resid.dtype)                 // [tokens, 1]
                  use direction = resid.mul(mask).sum(0L).div((float n).ToScalar()).sub(resid.mul(mask.neg().add((1.0).ToScalar())).sum(0L).div((float (inside.Length - n)).ToScalar()))   // [d_model]
                  let share (alpha: float) =
                      use _inner = torch.NewDisposeScope()
                      let hook = Hook(residName, HookFn(fun r _ -> r.add(direction.mul(alpha.ToScalar()))))
                      let struct (_, steered) =
                          subject.Model.RunWithCache(batch.Tokens, (fun n -> n = indexName), Array.append (subject.HooksFor batch.Tokens) [| hook |])
                      use steered = steered
                      let top = steered.[indexName].select(-1L, 0L).reshape(-1L).data<int64>().ToArray()
                      meanWhere (top |> Array.map (fun e -> if int e = target then 1.0 else 0.0)) (fun t -> not inside.[t])
                  yield { Column = col; Expert = target; Alphas = alphas; Share = alphas |> Array.map share } ]
