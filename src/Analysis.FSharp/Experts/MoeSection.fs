/// The report section of the expert study: heatmaps of expert × feature category for the trained
/// model and each baseline, NMI and purity with p-values over seeds, the ablation table, forcing and
/// steering, the MoE toy model of superposition, and a conclusion computed from the numbers.
module MechInterp.Analysis.Experts.MoeSection

open System
open MechInterp.Analysis.Report
open MechInterp.Analysis.Statistics
open MechInterp.Analysis.Experts.Subjects
open MechInterp.Analysis.Experts.Causal
open MechInterp.Analysis.Experts.MoeStudy

let private kindColor =
    function
    | Trained -> "#b2182b"
    | Untrained -> "#999999"
    | HashRouter -> "#2166ac"
    | Dense -> "#1b7837"

let private f3 (x: float) = if Double.IsFinite x then sprintf "%.3f" x else "–"

let private models (r: StudyResult) kind layer =
    r.Models |> List.filter (fun m -> m.Kind = kind && m.Layer = layer) |> List.sortBy (fun m -> m.Seed)

/// "mean ± half-width of the 95% CI" over seeds.
let private meanCi (xs: float list) =
    match xs |> List.filter Double.IsFinite with
    | [] -> "–"
    | xs ->
        let s = Intervals.summarize xs
        let lo, hi = s.Ci95
        sprintf "%.3f ± %.3f" s.Mean ((hi - lo) / 2.0)

let private pMax (ps: float list) = if ps.IsEmpty then "–" else sprintf "p ≤ %.3g" (List.max ps)

/// Trained beats a baseline on a statistic when it is larger in every seed (paired by seed).
let private beatsInEverySeed (r: StudyResult) layer baseline (stat: ModelResult -> float) =
    let trained = models r Trained layer
    let other = models r baseline layer
    List.length trained = List.length other && List.forall2 (fun (a: ModelResult) b -> stat a > stat b) trained other

let private nmiOf feature (m: ModelResult) = m.Stats.Specialization.[feature].Nmi.Observed
let private purityOf feature (m: ModelResult) = m.Stats.Specialization.[feature].Purity.Observed
let private nmiP feature (m: ModelResult) = m.Stats.Specialization.[feature].Nmi.PValue

/// An NMI below this is not called informative however small its p-value (fixed before the runs were read).
let minimumNmi = 0.05

/// Trained against one baseline on a statistic over seeds: mean difference and the exact permutation p-value.
let private versus (r: StudyResult) layer baseline (stat: ModelResult -> float) =
    let a = models r Trained layer |> List.map stat
    let b = models r baseline layer |> List.map stat
    if a.Length < 2 || b.Length < 2 || List.exists (Double.IsFinite >> not) (a @ b) then None
    else Some(Significance.permutationTest b a)

/// Per layer and feature: significant (p < 0.05) with NMI ≥ minimumNmi in every trained seed, above each
/// baseline in every seed, the trained NMI against the hash router and the dense model over seeds, and ablation
/// hurting the claimed category more than the feature's other tokens over seeds (a sign-flip test), the tests over
/// seeds Holm-adjusted over the study's feature × layer tests: a "yes" picked from ten comparisons must survive having
/// had ten chances.
type Verdict =
    { Layer: int
      Feature: string
      Significant: bool
      AboveBaselines: Kind list
      /// Per seed, the ablation's loss increase on the claimed category minus that on the feature's other tokens.
      Causal: Significance.PairedComparison option
      TrainedNmi: float
      BaselineNmi: (Kind * float) list
      VsHash: Significance.Comparison option
      VsDense: Significance.Comparison option
      /// Holm-adjusted p of "trained NMI above the hash router's" over every feature × layer.
      HashP: float
      /// Holm-adjusted p of "above the hash router's and the dense model's": each test's raw p is the larger of the two
      /// (an intersection–union test, which needs no correction of its own), then adjusted over every feature × layer.
      BothP: float
      /// Holm-adjusted one-sided sign-flip p of "ablating the claimed expert hurts its category more" over seeds.
      CausalP: float }

/// Raw one-directional evidence from a two-sided comparison: its p when trained is ahead, else 1.
let private aheadP (c: Significance.Comparison option) =
    match c with
    | Some c when c.Difference > 0.0 -> c.PValue
    | _ -> 1.0

let verdicts (r: StudyResult) =
    let raw =
        [ for layer in 0 .. r.Setup.Layers - 1 do
              for KeyValue(feature, _) in r.Features do
                  let trained = models r Trained layer
                  let baselines = [ Untrained; HashRouter; Dense ]
                  yield
                      { Layer = layer
                        Feature = feature
                        Significant = trained |> List.forall (fun m -> nmiP feature m < 0.05 && nmiOf feature m >= minimumNmi)
                        AboveBaselines = baselines |> List.filter (fun b -> beatsInEverySeed r layer b (nmiOf feature))
                        Causal =
                            let differences = trained |> List.map (fun m -> let claimed, other = m.Ablation.Claimed.[feature] in claimed - other)
                            if differences.Length < 2 || List.exists (Double.IsFinite >> not) differences then None
                            else Some(Significance.signFlipTest differences)
                        TrainedNmi = meanOver r Trained layer (nmiOf feature)
                        BaselineNmi = baselines |> List.map (fun b -> b, meanOver r b layer (nmiOf feature))
                        VsHash = versus r layer HashRouter (nmiOf feature)
                        VsDense = versus r layer Dense (nmiOf feature)
                        HashP = 1.0
                        BothP = 1.0
                        CausalP = 1.0 } ]
    let hash = raw |> List.map (fun v -> aheadP v.VsHash) |> Significance.holm
    let both = raw |> List.map (fun v -> max (aheadP v.VsHash) (aheadP v.VsDense)) |> Significance.holm
    let causal = raw |> List.map (fun v -> v.Causal |> Option.map (fun c -> c.PValue) |> Option.defaultValue 1.0) |> Significance.holm
    List.map3 (fun v (h, b) c -> { v with HashP = h; BothP = b; CausalP = c }) raw (List.zip hash both) causal

/// How far a feature's experts specialize in a layer: one classification for the answer, the conclusion and the table.
type Level =
    /// Informative in every seed, above the hash router and the dense model after the correction, and causal over seeds
    /// after it: every part must hold (an intersection–union test), each family Holm-adjusted on its own.
    | Specializes
    /// Informative and above the hash router after the correction, but not above the dense model or not causal.
    | AboveHash
    /// Informative in every seed, but not shown to carry more than token identity (the hash router) gives.
    | Informative
    | NotSpecialized

let level (v: Verdict) =
    if v.Significant && v.BothP < 0.05 && v.CausalP < 0.05 then Specializes
    elif v.Significant && v.HashP < 0.05 then AboveHash
    elif v.Significant then Informative
    else NotSpecialized

/// The experts of seed 0's trained model that claim a category of the feature (the one each over-represents most).
let private claims (r: StudyResult) layer (feature: string) =
    match models r Trained layer |> List.tryHead with
    | None -> "–"
    | Some m ->
        let table = m.Stats.Tables.[feature]
        let categories = r.Features.[feature]
        [ for e in 0 .. Array2D.length1 table - 1 do
              match Causal.claimOf table e with
              | Some c -> yield $"e{e}→{categories.[c]}"
              | None -> () ]
        |> String.concat ", "

/// "k of n seeds" in which the claimed category lost more than the feature's other tokens.
let private causalSeeds (v: Verdict) =
    match v.Causal with
    | Some c -> $"claimed > other in {c.Positive} of {c.Pairs} seeds"
    | None -> "no finite ablation in some seed"

/// One line per (layer, feature): whether its experts specialize, from the numbers of the answer table.
let featureVerdict (v: Verdict) =
    match level v with
    | Specializes ->
        $"experts specialize on {v.Feature} in layer {v.Layer}: above the hash router and the dense model (Holm p = {v.BothP:F3}), and removing an expert hurts its category more than the feature's other tokens ({causalSeeds v}, Holm p = {v.CausalP:F3})"
    | AboveHash ->
        $"{v.Feature} in layer {v.Layer}: informative and above the hash router (Holm p = {v.HashP:F3}), but "
        + (if v.BothP >= 0.05 then $"not above the dense model's neuron groups after the correction (Holm p = {v.BothP:F3})"
           else $"the ablation test is not significant over seeds ({causalSeeds v}, Holm p = {v.CausalP:F3})")
    | Informative ->
        $"{v.Feature} in layer {v.Layer}: informative, but not shown to carry more than routing by token identity gives (hash router, Holm p = {v.HashP:F3})"
    | NotSpecialized -> $"{v.Feature} in layer {v.Layer}: not specialized"

/// The expert–feature answer: per feature and layer, who claims it, NMI and purity against every baseline with
/// permutation p-values over seeds, the causal tests, and the verdict.
let private answerTable (r: StudyResult) =
    let vs = verdicts r
    let cmp (c: Significance.Comparison option) = match c with Some c -> sprintf "%+.3f (p = %.3g)" c.Difference c.PValue | None -> "–"
    { Title = $"Do experts specialize? Per feature and layer, over {r.Setup.Seeds.Length} seeds (trained − baseline, exact two-sided permutation p over seeds; Holm-adjusted over the {vs.Length} feature × layer tests)"
      Header = [ "layer"; "feature"; "experts claiming (seed 0)"; "NMI trained"; "vs hash router"; "vs dense"; "vs untrained"
                 "Holm p: above hash / above hash and dense"
                 "purity trained"; "purity vs hash"; "ablation Δloss claimed / other (seeds claimed > other; sign-flip Holm p)"; "forcing Δloss category / random"; "verdict" ]
      Rows =
        [ for v in vs ->
              let f = v.Feature
              let forced =
                  r.Forcing |> List.filter (fun (_, l, _) -> l = v.Layer) |> List.collect (fun (_, _, rows) -> rows)
                  |> List.filter (fun x -> x.Column.Feature = f && Double.IsFinite x.ForcedDelta && Double.IsFinite x.RandomDelta)
              let pairs = models r Trained v.Layer |> List.map (fun m -> m.Ablation.Claimed.[f])
              [ string v.Layer; f; claims r v.Layer f
                meanCi (models r Trained v.Layer |> List.map (nmiOf f))
                cmp v.VsHash; cmp v.VsDense; cmp (versus r v.Layer Untrained (nmiOf f))
                $"{v.HashP:F3} / {v.BothP:F3}"
                meanCi (models r Trained v.Layer |> List.map (purityOf f)); cmp (versus r v.Layer HashRouter (purityOf f))
                $"{f3 (pairs |> List.averageBy fst)} / {f3 (pairs |> List.averageBy snd)} ({causalSeeds v}; {v.CausalP:F3})"
                (if forced.IsEmpty then "–" else $"{f3 (forced |> List.averageBy (fun x -> x.ForcedDelta))} / {f3 (forced |> List.averageBy (fun x -> x.RandomDelta))}")
                featureVerdict v ] ] }

/// Did every trained model learn the rules? Rule accuracies per kind, mean over seeds.
let private rulesTable (r: StudyResult) =
    let layer = 0
    { Title = $"Rules of the toy language: accuracy of the top prediction where a rule fixes the next token (held-out batch, mean [95%% CI] over {r.Setup.Seeds.Length} seeds)"
      Header = [ "model" ] @ Rules.rules @ [ "learned (step, per seed)"; "converged (step, per seed)" ]
      Rows =
        [ for k in kinds ->
              let ms = models r k layer
              let steps (pick: MechInterp.Training.ConvergenceRecord -> Nullable<int>) =
                  ms |> List.map (fun m -> match m.Training with
                                           | None -> "–"
                                           | Some t -> let x = pick t.Convergence in if x.HasValue then string x.Value else "never")
                  |> String.concat ", "
              [ kindName k ]
              @ [ for rule in Rules.rules -> meanCi (ms |> List.map (fun m -> m.RuleAccuracy.[rule])) ]
              @ [ steps (fun c -> c.LearnedStep); steps (fun c -> c.ConvergedStep) ] ] }

/// The study's answer: which features (if any) pass every check.
let answer (r: StudyResult) : Answer =
    let vs = verdicts r
    let full = vs |> List.filter (fun v -> level v = Specializes)
    let trainedKinds = [ Trained; HashRouter; Dense ]
    let trainedModels = r.Models |> List.filter (fun m -> m.Layer = 0 && List.contains m.Kind trainedKinds)
    let learned = trainedModels |> List.filter (fun m -> m.Training |> Option.exists (fun t -> t.Convergence.Learned)) |> List.length
    let converged = trainedModels |> List.filter (fun m -> m.Training |> Option.exists (fun t -> t.Convergence.Converged)) |> List.length
    let layer = r.Setup.Layers - 1
    let best = r.Features |> Map.toList |> List.map fst |> List.maxBy (fun f -> meanOver r Trained layer (nmiOf f))
    let hashVs = vs |> List.tryFind (fun v -> v.Layer = layer && v.Feature = best) |> Option.bind (fun v -> v.VsHash)
    { Question = "Do specific experts fire for specific interpretable features, against honest baselines (hash router, dense, untrained)?"
      Verdict =
        if learned < trainedModels.Length then
            $"Not answered for every model: {learned} of {trainedModels.Length} trained models learned the language's rules"
        elif not full.IsEmpty then
            "Yes, for " + (full |> List.map (fun v -> $"{v.Feature} (layer {v.Layer})") |> String.concat ", ")
            + $": above the hash router and the dense model over seeds, and ablation hurts the claimed category most over seeds (each Holm-adjusted over {vs.Length} feature × layer tests)"
        elif vs |> List.exists (fun v -> level v = AboveHash) then
            $"Partly: some features' expert choice beats the hash router after the correction over {vs.Length} feature × layer tests, but none passes every check"
        else
            $"No: no feature's expert choice is shown to carry more than routing by token identity (the hash router) gives, after the correction over {vs.Length} feature × layer tests"
      Evidence = vs |> List.map featureVerdict |> String.concat "; "
      KeyNumber =
        $"layer {layer}, {best}: NMI trained {meanCi (models r Trained layer |> List.map (nmiOf best))}, hash router {meanCi (models r HashRouter layer |> List.map (nmiOf best))}"
        + (match hashVs with Some c -> $" (permutation p = {c.PValue:g3})" | None -> "")
      Seeds = r.Setup.Seeds.Length
      Runs = trainedModels.Length
      Converged = converged }

let private conclusion (r: StudyResult) =
    let vs = verdicts r
    let full = vs |> List.filter (fun v -> level v = Specializes)
    let beatsHash = vs |> List.filter (fun v -> level v = AboveHash)
    let describe (v: Verdict) =
        let b = v.BaselineNmi |> List.map (fun (k, x) -> $"{kindName k} {f3 x}") |> String.concat ", "
        $"{v.Feature} in layer {v.Layer} (NMI {f3 v.TrainedNmi}; {b})"
    let seeds = r.Setup.Seeds.Length
    // The exact test of n seeds against n can go no lower than 2 / C(2n, n), the sign-flip test than 1 / 2^n; past their
    // exact limits both sample 100,000 relabellings besides the observed one. Holm's first step asks for 0.05 / tests.
    let sampled = 1.0 / 100_001.0
    let splits = Seq.fold (fun acc i -> acc * float (seeds + i) / float i) 1.0 [ 1 .. seeds ]
    let smallestP = if splits <= 200_000.0 then 2.0 / splits else sampled
    let smallestFlip = if seeds <= 17 then 0.5 ** float seeds else sampled
    let caveat =
        $"With {seeds} seeds a kind, the exact two-sided permutation test of trained against a baseline can reach p = {smallestP:g3} at best, the ablation's sign-flip test p = {smallestFlip:g3}, and Holm's correction over the {vs.Length} feature × layer tests asks for p ≤ {0.05 / float vs.Length:g3} from the strongest"
        + (if max smallestP smallestFlip > 0.05 / float vs.Length then "; so no feature can pass at this seed count. " else ". ")
        + "The per-seed label-shuffle p-values test dependence on the labels, not superiority over a baseline."
    let answer =
        if not full.IsEmpty then
            "Yes, for some features: "
            + (full |> List.map describe |> String.concat "; ")
            + ". For these the trained router's expert choice carries more information about the feature than the hash router and the dense model's neuron groups do over seeds, after the correction for testing every feature in every layer, and removing an expert costs more loss on the category it over-represents than on the feature's other tokens over seeds (sign-flip test, after the same correction)."
        elif not beatsHash.IsEmpty then
            "Partly: the trained router's choice is informative and beats the hash router after the correction for "
            + (beatsHash |> List.map describe |> String.concat "; ")
            + ", but no feature passes all checks (above the dense model too after the correction, and the ablation test over seeds after it)."
        else
            "No: at this scale no feature's expert choice beats the hash-router baseline after the correction for testing every feature in every layer; what specialization the tables show is not shown to exceed what routing by token identity gives for free."
    let weak = vs |> List.filter (fun v -> not v.Significant || v.AboveBaselines.Length < 3) |> List.map (fun v -> $"{v.Feature}@{v.Layer}")
    let steeringLine =
        [ for layer in 0 .. r.Setup.Layers - 1 ->
              let rows = r.Steering |> List.filter (fun (_, l, _) -> l = layer) |> List.collect (fun (_, _, rows) -> rows)
              let at i = if rows.IsEmpty then nan else rows |> List.averageBy (fun s -> s.Share.[i])
              $"layer {layer}: {f3 (at 0)} at α = 0 → {f3 (at (steeringAlphas.Length - 1))} at α = {steeringAlphas.[steeringAlphas.Length - 1]}" ]
        |> String.concat "; "
    let forcingLine =
        let rows = r.Forcing |> List.collect (fun (_, _, rows) -> rows)
        let forced = rows |> List.filter (fun x -> Double.IsFinite x.ForcedDelta && Double.IsFinite x.RandomDelta)
        let worse = forced |> List.filter (fun x -> x.ForcedDelta > x.RandomDelta) |> List.length
        $"Forcing a category's tokens to other experts cost them more loss than forcing as many random tokens in {worse} of {forced.Length} (seed, layer, category) cases."
    let toy = r.ToyResults
    let toyLine =
        let avg f = toy |> List.averageBy f
        $"Toy model of superposition: each width-{r.Toy.Hidden} expert represents {avg (fun c -> Array.averageBy float c.RepresentedPerExpert):F1} features "
        + $"({avg (fun c -> c.MoeFeaturesPerDimension):F2} per dimension, mean dimensionality D_i {avg (fun c -> c.MoeMeanDimensionality):F2}) against "
        + $"{avg (fun c -> c.DenseFeaturesPerDimension):F2} per dimension (D_i {avg (fun c -> c.DenseMeanDimensionality):F2}) in the dense width-{r.Toy.Hidden * r.Toy.Experts} model; "
        + $"a feature keeps {100.0 * avg (fun c -> c.Exclusivity):F0}%% of its embedding norm² in its main expert. "
        + (if avg (fun c -> c.MoeMeanDimensionality) < avg (fun c -> c.DenseMeanDimensionality) then
               "Inside an expert features are more superposed (lower D_i), not more monosemantic, than in the dense model. "
           else "Inside an expert features are no more superposed (D_i at least the dense model's). ")
        + (if avg (fun c -> c.MoeLoss) > avg (fun c -> c.DenseLoss) then
               $"The MoE reconstructs worse (loss {avg (fun c -> c.MoeLoss):F3} vs {avg (fun c -> c.DenseLoss):F3}; a sample passes through {r.Toy.Hidden} of the {r.Toy.Hidden * r.Toy.Experts} dimensions)."
           else $"The MoE reconstructs at least as well (loss {avg (fun c -> c.MoeLoss):F3} vs {avg (fun c -> c.DenseLoss):F3}).")
    [ "Conclusion. " + answer
      (if weak.IsEmpty then "Every feature passed in every layer."
       else "Not above every baseline in every seed (or NMI below " + string minimumNmi + "): " + String.concat ", " weak + ".")
      $"Steering along a category's mean-difference direction moves routing to its expert (share of other tokens routed there, mean over categories and seeds: {steeringLine})."
      forcingLine
      toyLine
      caveat ]

let private heatmapFigure (r: StudyResult) =
    let cols = columns r.Features
    let seed = r.Setup.Seeds.Head
    let panels =
        [ for layer in 0 .. r.Setup.Layers - 1 do
              for kind in kinds do
                  let m = models r kind layer |> List.find (fun m -> m.Seed = seed)
                  let z =
                      let tables = cols |> List.map (fun c -> Specialization.expertGivenCategory m.Stats.Tables.[c.Feature] |> fun p -> p.[c.Id, *])
                      Array2D.init r.Setup.Experts cols.Length (fun e c -> tables.[c].[e])
                  yield { Panel.empty $"{kindName kind}, layer {layer}" with
                              XLabel = "feature category"; YLabel = "expert"; Series = [ Heatmap(z, -1.0, 1.0) ] } ]
    Figure.create "routing-heatmaps" "Where each feature category's tokens go: P(expert | category)"
        ($"Each column sums to 1; white 0, dark red 1 (one expert takes the whole category), an even spread is 1/{r.Setup.Experts}. Seed {seed}, held-out batch. "
         + "Dense model: 'expert' is the neuron group (d_mlp in n_experts contiguous groups) with the largest activation norm. Columns: "
         + (cols |> List.mapi (fun i c -> $"{i} {columnName c}") |> String.concat ", ") + ".")
        4 panels

let private nmiFigure (r: StudyResult) =
    let features = r.Features |> Map.toList |> List.map fst
    let panels =
        [ for layer in 0 .. r.Setup.Layers - 1 ->
              let series =
                  kinds |> List.mapi (fun i kind ->
                      let xs = features |> List.mapi (fun j _ -> float j + 0.2 * float i - 0.3) |> Array.ofList
                      let ys = features |> List.map (fun f -> meanOver r kind layer (nmiOf f)) |> Array.ofList
                      Bars(kindName kind, xs, ys, Array.create xs.Length (kindColor kind)))
              { Panel.empty $"layer {layer}" with XLabel = "feature (" + String.concat ", " features + ")"; YLabel = "NMI (mean over seeds)"; Series = series } ]
    Figure.create "nmi" "NMI of expert choice and feature"
        "Bars per feature in the order of the axis label: trained (red), untrained (grey), hash router (blue), dense neuron groups (green)."
        2 panels

let private ablationFigure (r: StudyResult) =
    let seed = r.Setup.Seeds.Head
    let panels =
        [ for layer in 0 .. r.Setup.Layers - 1 do
              for kind in [ Trained; Dense ] do
                  let m = models r kind layer |> List.find (fun m -> m.Seed = seed)
                  let z = m.Ablation.DeltaLoss |> Array2D.map (fun x -> if Double.IsFinite x then x else 0.0)
                  let extent = z |> Seq.cast<float> |> Seq.map abs |> Seq.fold max 1e-6
                  yield { Panel.empty $"{kindName kind}, layer {layer}" with
                              XLabel = "feature category"; YLabel = "expert (dense: neuron group)"; Series = [ Heatmap(z, -extent, extent) ] } ]
    Figure.create "ablation" "Δ next-token loss when one expert is removed"
        $"Mean loss(ablated) − loss(clean) on tokens of each category (columns as in the routing heatmaps), seed {seed}. Red: the category loses from the ablation."
        2 panels

let private steeringFigure (r: StudyResult) =
    let panels =
        [ for layer in 0 .. r.Setup.Layers - 1 ->
              let rows = r.Steering |> List.filter (fun (_, l, _) -> l = layer) |> List.collect (fun (_, _, rows) -> rows)
              let series =
                  r.Features |> Map.toList |> List.mapi (fun i (feature, _) ->
                      let mine = rows |> List.filter (fun s -> s.Column.Feature = feature)
                      let ys = steeringAlphas |> Array.mapi (fun a _ -> if mine.IsEmpty then nan else mine |> List.averageBy (fun s -> s.Share.[a]))
                      let palette = [| "#b2182b"; "#2166ac"; "#1b7837"; "#762a83"; "#e08214" |]
                      Line(feature, steeringAlphas, ys, palette.[i % palette.Length], true))
              { Panel.empty $"layer {layer}" with XLabel = "α (multiples of the mean difference)"; YLabel = "share routed to the category's expert"; ShowLegend = true; Series = series } ]
    Figure.create "steering" "Steering the residual stream along a category's direction moves routing to its expert"
        "Share of the other tokens whose top expert becomes the category's expert, averaged over the feature's categories and the seeds."
        2 panels

let private nmiTable (r: StudyResult) layer =
    let header = [ "feature" ] @ [ for k in kinds -> $"{kindName k} NMI" ] @ [ for k in kinds -> $"{kindName k} purity" ]
    let rows =
        [ for KeyValue(f, _) in r.Features ->
              [ f ]
              @ [ for k in kinds ->
                      let ms = models r k layer
                      $"{meanCi (ms |> List.map (nmiOf f))} ({pMax (ms |> List.map (nmiP f))})" ]
              @ [ for k in kinds ->
                      let ms = models r k layer
                      $"{meanCi (ms |> List.map (purityOf f))} ({pMax (ms |> List.map (fun m -> m.Stats.Specialization.[f].Purity.PValue))}; null {f3 (ms |> List.averageBy (fun m -> m.Stats.Specialization.[f].Purity.NullMean))})" ] ]
    { Title = $"Layer {layer}: NMI and purity, mean ± 95%% CI over {r.Setup.Seeds.Length} seeds (largest permutation p-value over seeds, {r.Setup.Shuffles} shuffles)"
      Header = header
      Rows = rows }

let private claimedTable (r: StudyResult) =
    { Title = "Ablation: Δloss on each expert's claimed category vs the feature's other tokens (mean over experts, then seeds)"
      Header = [ "layer"; "feature" ] @ [ for k in kinds -> $"{kindName k}: claimed / other" ]
      Rows =
        [ for layer in 0 .. r.Setup.Layers - 1 do
              for KeyValue(f, _) in r.Features ->
                  [ string layer; f ]
                  @ [ for k in kinds ->
                          let pairs = models r k layer |> List.map (fun m -> m.Ablation.Claimed.[f])
                          $"{f3 (pairs |> List.averageBy fst)} / {f3 (pairs |> List.averageBy snd)}" ] ] }

let private ablationTable (r: StudyResult) =
    let layer = r.Setup.Layers - 1
    let seed = r.Setup.Seeds.Head
    let m = models r Trained layer |> List.find (fun m -> m.Seed = seed)
    let cols = m.Ablation.Columns
    { Title = $"Ablation table, trained model, layer {layer}, seed {seed}: Δloss per expert × feature category (load in brackets)"
      Header = "expert" :: (cols |> List.map columnName)
      Rows =
        [ for e in 0 .. Array2D.length1 m.Ablation.DeltaLoss - 1 ->
              $"{e} ({m.Stats.Load.[e]:F2})" :: [ for c in 0 .. cols.Length - 1 -> f3 m.Ablation.DeltaLoss.[e, c] ] ] }

let private forcingTable (r: StudyResult) =
    let rows = r.Forcing |> List.collect (fun (_, layer, rows) -> rows |> List.map (fun x -> layer, x))
    { Title = "Forcing a category's tokens to other experts (trained model, mean over seeds)"
      Header = [ "layer"; "category"; "tokens"; "Δloss, category forced"; "Δloss, as many random tokens forced" ]
      Rows =
        rows
        |> List.groupBy (fun (layer, x) -> layer, columnName x.Column)
        |> List.map (fun ((layer, name), xs) ->
            [ string layer; name; string (xs |> List.sumBy (fun (_, x) -> x.Tokens))
              f3 (xs |> List.averageBy (fun (_, x) -> x.ForcedDelta)); f3 (xs |> List.averageBy (fun (_, x) -> x.RandomDelta)) ]) }

let private toyTable (r: StudyResult) =
    let t = r.Toy
    { Title = $"MoE toy model of superposition: n = {t.Features} features, S = {t.Sparsity}, {t.Experts} experts of width {t.Hidden} vs dense width {t.Hidden * t.Experts}"
      Header = [ "seed"; "loss MoE / dense"; "represented per expert"; "represented MoE (any expert) / dense"; "features per dimension MoE expert / dense"
                 "mean D_i MoE / dense"; "exclusivity"; "lone features routed per expert"; "router agrees with longest W_e,i" ]
      Rows =
        [ for c in r.ToyResults ->
              [ string c.Seed; $"{f3 c.MoeLoss} / {f3 c.DenseLoss}"; c.RepresentedPerExpert |> Array.map string |> String.concat ", "
                $"{c.MoeRepresented} / {c.DenseRepresented}"; $"{f3 c.MoeFeaturesPerDimension} / {f3 c.DenseFeaturesPerDimension}"
                $"{f3 c.MoeMeanDimensionality} / {f3 c.DenseMeanDimensionality}"; f3 c.Exclusivity
                c.RoutedPerExpert |> Array.map string |> String.concat ", "; f3 c.RouterAgreesWithEmbedding ] ] }

let private routingTable (r: StudyResult) =
    { Title = "Routing statistics (mean over seeds)"
      Header = [ "layer"; "model"; "held-out loss"; "load entropy (max ln E)"; "router entropy"; "consecutive same expert" ]
      Rows =
        [ for layer in 0 .. r.Setup.Layers - 1 do
              for k in kinds ->
                  [ string layer; kindName k; f3 (meanOver r k layer (fun m -> m.EvalLoss)); f3 (meanOver r k layer (fun m -> m.Stats.LoadEntropy))
                    f3 (meanOver r k layer (fun m -> defaultArg m.Stats.RouterEntropy nan)); f3 (meanOver r k layer (fun m -> m.Stats.ConsecutiveSame)) ] ] }

/// The section for the report.
let section (r: StudyResult) : ReportSection =
    let s = r.Setup
    let seedList = String.Join(", ", s.Seeds)
    let toy = r.ToyResults
    let keyNumbers =
        [ for layer in 0 .. s.Layers - 1 do
              let best = r.Features |> Map.toList |> List.map fst |> List.maxBy (fun f -> meanOver r Trained layer (nmiOf f))
              yield { Label = $"layer {layer}: most informative feature (NMI trained / untrained / hash router / dense)"
                      Value = $"{best}: " + (kinds |> List.map (fun k -> f3 (meanOver r k layer (nmiOf best))) |> String.concat " / ") } ]
        @ [ { Label = "toy model: features represented, MoE (any expert) vs dense, mean over seeds"
              Value = $"{toy |> List.averageBy (fun c -> float c.MoeRepresented):F1} vs {toy |> List.averageBy (fun c -> float c.DenseRepresented):F1} of {r.Toy.Features}" }
            { Label = "study wall time"; Value = $"{r.Seconds:F0} s" } ]
    { ReportSection.create "moe" "Do mixture-of-experts experts specialize on interpretable features?" with
        Paragraphs =
            [ $"A {s.Layers}-layer decoder (d_model {s.DModel}, {s.Heads} heads) whose every MLP is a mixture of {s.Experts} experts (top-{s.TopK}, expert d_mlp {s.ExpertDMlp}, Switch load-balancing loss α = 0.01) is trained on the toy language until it has learned every rule (top prediction right on at least 90%% of each rule's positions on a held-out batch) and then converged, for at most {s.Steps} steps; the baselines train the same way, each set of seeds as one batched model. Its tokens carry ground-truth labels defined in ToyLanguage before any training: token class, number, position parity, inside brackets and the rule that fixes the next token."
              $"Baselines, each analysed the same way: the same model untrained; the same MoE trained with a fixed random hash router (experts chosen by token id, gates 1/k); and a dense decoder with the same active parameters (d_mlp {s.TopK * s.ExpertDMlp}), whose 'expert' for a token is the strongest of {s.Experts} contiguous neuron groups. Every number is measured on a held-out batch of {s.AnalysisBatch} sequences, for seeds {seedList}."
              "Specialization is the normalized mutual information 2I/(H(E)+H(F)) between a token's top expert and a feature, and cluster purity (share of tokens in their expert's majority category; for an imbalanced binary feature every expert's majority is the common category, so purity cannot move and its p-value is 1); each is tested against label shuffles. The hash router matters most: it routes by token identity too, so whatever NMI it reaches is what the vocabulary alone gives."
              $"Mixture of experts in the toy model of superposition: {r.Toy.Experts} experts of width {r.Toy.Hidden} behind a top-1 router against the dense model of width {r.Toy.Hidden * r.Toy.Experts}, n = {r.Toy.Features} features of equal importance at sparsity {r.Toy.Sparsity}." ]
            @ conclusion r
        KeyNumbers = keyNumbers
        Figures = [ heatmapFigure r; nmiFigure r; ablationFigure r; steeringFigure r ]
        Tables =
            [ answerTable r; rulesTable r ]
            @ [ for layer in 0 .. s.Layers - 1 -> nmiTable r layer ]
            @ [ routingTable r; claimedTable r; ablationTable r; forcingTable r; toyTable r ] }
