/// Is a difference between two groups of seeds real? An exact two-sided permutation test on the
/// difference of means (no normality assumed, exact for the small seed counts experiments use).
module MechInterp.Analysis.Statistics.Significance

open System

type Comparison =
    { /// mean(b) − mean(a)
      Difference: float
      /// Welch's t statistic of the difference (for reference; the p-value is the permutation one).
      WelchT: float
      /// Two-sided p-value: the share of relabellings whose |difference| is at least the observed one.
      PValue: float
      /// Relabellings counted (all of them when there are at most 200,000, else the observed one and a fixed-seed sample).
      Permutations: int }

let private check (name: string) (xs: float[]) =
    if xs.Length < 2 then invalidArg name $"each group needs at least 2 values, got {xs.Length}"
    match xs |> Array.tryFind (fun x -> Double.IsNaN x || Double.IsInfinity x) with
    | Some bad -> invalidArg name $"group contains a non-finite value ({bad})"
    | None -> ()

let private combinations n k =
    let rec go n k = if k = 0 || k = n then 1.0 else go (n - 1) (k - 1) * float n / float k
    go n k

/// Visits every way of choosing k of n indices as one group (exact while there are at most 200,000), else the
/// observed group (its k indices) and 100,000 random choices from a fixed seed; returns how many were visited. The
/// relabellings of a permutation test: the observed one is always among them, so a p-value is at least one over the
/// count, never 0 (Phipson and Smyth 2010, "Permutation p-values should never be zero").
let relabellings (n: int) (k: int) (observed: int[]) (visit: int[] -> unit) =
    if observed.Length <> k then invalidArg (nameof observed) $"the observed group has {observed.Length} indices, expected {k}"
    if combinations n k <= 200_000.0 then
        let chosen = Array.zeroCreate k
        let count = ref 0
        let rec choose start depth =
            if depth = k then
                visit chosen
                count.Value <- count.Value + 1
            else
                for i in start .. n - (k - depth) do
                    chosen.[depth] <- i
                    choose (i + 1) (depth + 1)
        choose 0 0
        count.Value
    else
        let rng = Random 12345
        visit observed
        for _ in 1 .. 100_000 do
            visit (Array.init n id |> Array.sortBy (fun _ -> rng.Next()) |> Array.take k)
        100_001

/// Compares b against a (e.g. a variant against the baseline).
let permutationTest (a: float seq) (b: float seq) =
    let a, b = Seq.toArray a, Seq.toArray b
    check (nameof a) a
    check (nameof b) b
    let all = Array.append a b
    let n, na = all.Length, a.Length
    let total = Array.sum all
    let diffOf (sumA: float) = (total - sumA) / float b.Length - sumA / float na
    let observed = diffOf (Array.sum a)
    let tolerance = 1e-12 * (1.0 + abs observed)
    let extreme = ref 0
    // Every subset of size na of the pooled values plays group a once.
    let count = relabellings n na (Array.init na id) (fun group -> if abs (diffOf (group |> Array.sumBy (fun i -> all.[i]))) >= abs observed - tolerance then extreme.Value <- extreme.Value + 1)
    let var (xs: float[]) =
        let m = Array.average xs
        (xs |> Array.sumBy (fun x -> (x - m) ** 2.0)) / float (xs.Length - 1)
    let se = sqrt (var a / float a.Length + var b / float b.Length)
    { Difference = observed
      WelchT = (if se > 0.0 then observed / se else if observed = 0.0 then 0.0 else Double.PositiveInfinity * float (sign observed))
      PValue = float extreme.Value / float count
      Permutations = count }

type PairedComparison =
    { /// Mean of the paired differences.
      Mean: float
      /// How many differences are above 0, of how many.
      Positive: int
      Pairs: int
      /// One-sided p-value of "the differences lean above 0": the share of sign flips whose mean is at least the observed.
      PValue: float
      /// Sign flips counted (all 2^n while n <= 17, else the observed one and 100,000 from a fixed seed).
      Flips: int }

/// Does a paired difference (a seed's claimed minus other) lean above 0 over seeds? An exact sign-flip test: under the
/// null each difference is as likely negative as positive, so every assignment of signs is a relabelling. No
/// unanimity is asked of the seeds: one tie among sixteen does not sink the test, as it would a rule "in every seed".
let signFlipTest (differences: float seq) =
    let d = Seq.toArray differences
    check (nameof differences) d
    let n = d.Length
    let observed = Array.sum d
    let tolerance = 1e-12 * (1.0 + Array.sumBy abs d)
    let extreme = ref 0
    let visit (flipped: int -> bool) =
        let mutable sum = 0.0
        for i in 0 .. n - 1 do sum <- sum + (if flipped i then -d.[i] else d.[i])
        if sum >= observed - tolerance then extreme.Value <- extreme.Value + 1
    let count =
        if n <= 17 then
            for signs in 0 .. (1 <<< n) - 1 do visit (fun i -> (signs >>> i) &&& 1 = 1)
            1 <<< n
        else
            let rng = Random 12345
            visit (fun _ -> false)
            for _ in 1 .. 100_000 do
                let flips = Array.init n (fun _ -> rng.Next 2 = 1)
                visit (fun i -> flips.[i])
            100_001
    { Mean = observed / float n; Positive = d |> Array.filter (fun x -> x > 0.0) |> Array.length; Pairs = n
      PValue = float extreme.Value / float count; Flips = count }

/// Holm's step-down adjustment of a family of p-values, returned in their order: the family-wise error rate stays at
/// most α when every adjusted p below α is called significant, whatever the tests' dependence. The smallest of m is
/// multiplied by m, the next by m − 1, and so on, each kept at least the one before it and at most 1.
let holm (ps: float list) =
    match ps |> List.tryFind (fun p -> Double.IsNaN p || p < 0.0 || p > 1.0) with
    | Some bad -> invalidArg (nameof ps) $"p-values must lie in [0, 1], got {bad}"
    | None -> ()
    let m = ps.Length
    let adjusted = Array.zeroCreate m
    let mutable running = 0.0
    ps |> List.indexed |> List.sortBy snd |> List.iteri (fun rank (i, p) ->
        running <- max running (min 1.0 (float (m - rank) * p))
        adjusted.[i] <- running)
    List.ofArray adjusted
