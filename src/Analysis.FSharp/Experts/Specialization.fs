/// Does expert choice carry information about a ground-truth feature? Contingency tables of
/// expert × category, the conditional tables read off them, normalized mutual information, cluster
/// purity, and permutation tests that shuffle the labels (keeping each expert's load) for p-values.
/// Plain arrays in and out, so hand-made tables test every definition.
module MechInterp.Analysis.Experts.Specialization

open System

/// counts.[e, c]: tokens routed to expert e whose label is category c.
let contingency (experts: int) (categories: int) (choice: int[]) (labels: int[]) : int[,] =
    if choice.Length <> labels.Length then
        invalidArg (nameof labels) $"{labels.Length} labels for {choice.Length} expert choices; give one per token"
    let table = Array2D.zeroCreate experts categories
    for t in 0 .. choice.Length - 1 do
        let e, c = choice.[t], labels.[t]
        if e < 0 || e >= experts then invalidArg (nameof choice) $"expert {e} at token {t} is outside [0, {experts})"
        if c < 0 || c >= categories then invalidArg (nameof labels) $"category {c} at token {t} is outside [0, {categories})"
        table.[e, c] <- table.[e, c] + 1
    table

let private total (table: int[,]) = table |> Seq.cast<int> |> Seq.sum

let private rowSums (table: int[,]) = Array.init (Array2D.length1 table) (fun r -> Array.sum table.[r, *])

let private colSums (table: int[,]) = Array.init (Array2D.length2 table) (fun c -> Array.sum table.[*, c])

/// Shannon entropy (nats) of a count vector; 0 for an empty one.
let entropy (counts: float[]) =
    let n = Array.sum counts
    if n <= 0.0 then 0.0
    else counts |> Array.sumBy (fun x -> if x > 0.0 then -(x / n) * log (x / n) else 0.0)

/// I(expert; category) in nats from the joint counts.
let mutualInformation (table: int[,]) =
    let n = float (total table)
    if n = 0.0 then 0.0
    else
        let rows, cols = rowSums table, colSums table
        let mutable mi = 0.0
        table |> Array2D.iteri (fun e c x ->
            if x > 0 then
                let pxy = float x / n
                mi <- mi + pxy * log (pxy / (float rows.[e] / n * (float cols.[c] / n))))
        max 0.0 mi

/// NMI = 2 I(E; F) / (H(E) + H(F)) (the arithmetic normalization, scikit-learn's default), in [0, 1];
/// 0 when both marginals are constant (nothing to share).
let nmi (table: int[,]) =
    let h = entropy (rowSums table |> Array.map float) + entropy (colSums table |> Array.map float)
    if h <= 0.0 then 0.0 else min 1.0 (2.0 * mutualInformation table / h)

/// Cluster purity with experts as clusters: Σ_e max_c n[e, c] / N, the share of tokens whose expert's
/// top category is their own. 1 when every expert sees one category; at least max_c P(c) always.
let purity (table: int[,]) =
    let n = total table
    if n = 0 then 0.0
    else
        let best = Array.init (Array2D.length1 table) (fun e -> Array.max table.[e, *])
        float (Array.sum best) / float n

/// P(expert | category) as [category, expert]; a category with no tokens gets a zero row.
let expertGivenCategory (table: int[,]) : float[,] =
    let cols = colSums table
    Array2D.init (Array2D.length2 table) (Array2D.length1 table) (fun c e ->
        if cols.[c] = 0 then 0.0 else float table.[e, c] / float cols.[c])

/// P(category | expert) as [expert, category]; an expert with no tokens gets a zero row.
let categoryGivenExpert (table: int[,]) : float[,] =
    let rows = rowSums table
    Array2D.init (Array2D.length1 table) (Array2D.length2 table) (fun e c ->
        if rows.[e] = 0 then 0.0 else float table.[e, c] / float rows.[e])

/// log2 of P(category | expert) / P(category): how much more often an expert sees a category than the
/// data does; clipped to ±cap (a zero count is −cap), NaN-free for plotting.
let lift (cap: float) (table: int[,]) : float[,] =
    let n = float (total table)
    let cols = colSums table
    let given = categoryGivenExpert table
    given |> Array2D.mapi (fun _ c p ->
        if cols.[c] = 0 || n = 0.0 then 0.0
        elif p = 0.0 then -cap
        else Math.Clamp(Math.Log2(p / (float cols.[c] / n)), -cap, cap))

/// Share of tokens each expert receives.
let load (experts: int) (choice: int[]) : float[] =
    let counts = Array.zeroCreate experts
    for e in choice do counts.[e] <- counts.[e] + 1.0
    let n = float (max 1 choice.Length)
    counts |> Array.map (fun c -> c / n)

/// Share of adjacent token pairs (same sequence, positions p and p + 1) routed to the same expert.
let consecutiveSameRate (choice: int[]) (sequence: int[]) (position: int[]) =
    let mutable same, pairs = 0, 0
    for t in 1 .. choice.Length - 1 do
        if sequence.[t] = sequence.[t - 1] && position.[t] = position.[t - 1] + 1 then
            pairs <- pairs + 1
            if choice.[t] = choice.[t - 1] then same <- same + 1
    if pairs = 0 then nan else float same / float pairs

/// A statistic, its value under label shuffles, and the permutation p-value.
type Tested =
    { Observed: float
      NullMean: float
      /// (1 + #{shuffles with statistic ≥ observed}) / (1 + shuffles): never 0, exact under exchangeability.
      PValue: float }

/// NMI and purity of one feature with their permutation tests, from the same shuffles.
type FeatureSpecialization =
    { Nmi: Tested
      Purity: Tested }

let private shuffleInPlace (rng: Random) (xs: int[]) =
    for i in xs.Length - 1 .. -1 .. 1 do
        let j = rng.Next(i + 1)
        let t = xs.[i]
        xs.[i] <- xs.[j]
        xs.[j] <- t

/// NMI and purity of expert choice against a feature, each tested against `shuffles` permutations of
/// the labels: the null "expert choice is independent of the feature" with loads and category
/// frequencies as observed. Tokens are treated as exchangeable, which neighbouring tokens are not
/// exactly; the baselines (hash router, untrained, dense) are the check that this is not what drives a result.
let specialization (rng: Random) (shuffles: int) (experts: int) (categories: int) (choice: int[]) (labels: int[]) =
    if shuffles < 1 then invalidArg (nameof shuffles) $"shuffles must be at least 1, got {shuffles}"
    let table = contingency experts categories choice labels
    let nmi0, purity0 = nmi table, purity table
    let shuffled = Array.copy labels
    let mutable nmiSum, puritySum, nmiHits, purityHits = 0.0, 0.0, 0, 0
    // Float noise must not turn a tie into a miss: a shuffle equal to the observation counts as ≥.
    let tol = 1e-12
    for _ in 1 .. shuffles do
        shuffleInPlace rng shuffled
        let t = contingency experts categories choice shuffled
        let n, p = nmi t, purity t
        nmiSum <- nmiSum + n
        puritySum <- puritySum + p
        if n >= nmi0 - tol then nmiHits <- nmiHits + 1
        if p >= purity0 - tol then purityHits <- purityHits + 1
    let s = float shuffles
    { Nmi = { Observed = nmi0; NullMean = nmiSum / s; PValue = float (1 + nmiHits) / (1.0 + s) }
      Purity = { Observed = purity0; NullMean = puritySum / s; PValue = float (1 + purityHits) / (1.0 + s) } }
