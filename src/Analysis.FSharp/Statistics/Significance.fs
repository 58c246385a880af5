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
      /// Relabellings counted (all of them when there are at most 200,000, else a fixed-seed sample).
      Permutations: int }

let private check (name: string) (xs: float[]) =
    if xs.Length < 2 then invalidArg name $"each group needs at least 2 values, got {xs.Length}"
    match xs |> Array.tryFind (fun x -> Double.IsNaN x || Double.IsInfinity x) with
    | Some bad -> invalidArg name $"group contains a non-finite value ({bad})"
    | None -> ()

let private combinations n k =
    let rec go n k = if k = 0 || k = n then 1.0 else go (n - 1) (k - 1) * float n / float k
    go n k

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
    let mutable extreme, count = 0, 0
    let record sumA =
        count <- count + 1
        if abs (diffOf sumA) >= abs observed - tolerance then extreme <- extreme + 1
    if combinations n na <= 200_000.0 then
        // Every subset of size na of the pooled values plays group a once.
        let rec choose start left sumA =
            if left = 0 then record sumA
            else
                for i in start .. n - left do
                    choose (i + 1) (left - 1) (sumA + all.[i])
        choose 0 na 0.0
    else
        let rng = Random 12345
        for _ in 1 .. 100_000 do
            let shuffled = all |> Array.sortBy (fun _ -> rng.Next())
            record (Array.sum shuffled.[0 .. na - 1])
    let var (xs: float[]) =
        let m = Array.average xs
        (xs |> Array.sumBy (fun x -> (x - m) ** 2.0)) / float (xs.Length - 1)
    let se = sqrt (var a / float a.Length + var b / float b.Length)
    { Difference = observed
      WelchT = (if se > 0.0 then observed / se else if observed = 0.0 then 0.0 else Double.PositiveInfinity * float (sign observed))
      PValue = float extreme / float count
      Permutations = count }
