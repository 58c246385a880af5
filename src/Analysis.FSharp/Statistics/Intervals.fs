/// Summaries over seeds: means with Student-t 95% confidence intervals, as every experiment reports.
module MechInterp.Analysis.Statistics.Intervals

open System

/// Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom; beyond that, the normal 1.96 is within 1.5%.
let private t975 =
    [| 12.706; 4.303; 3.182; 2.776; 2.571; 2.447; 2.365; 2.306; 2.262; 2.228
       2.201; 2.179; 2.160; 2.145; 2.131; 2.120; 2.110; 2.101; 2.093; 2.086
       2.080; 2.074; 2.069; 2.064; 2.060; 2.056; 2.052; 2.048; 2.045; 2.042 |]

/// The 97.5% quantile of Student's t with `df` degrees of freedom.
let tQuantile975 (df: int) =
    if df < 1 then invalidArg (nameof df) $"degrees of freedom must be at least 1, got {df}"
    elif df <= t975.Length then t975.[df - 1]
    elif df <= 60 then 2.000
    elif df <= 120 then 1.980
    else 1.960

/// Mean, sample standard deviation, and the 95% confidence interval of the mean.
type Summary =
    { N: int
      Mean: float
      StdDev: float
      Ci95: float * float }

/// Summarizes a sample; a single value gets a zero-width interval (no spread is known), NaN or empty input an error.
let summarize (xs: float seq) =
    let xs = Seq.toArray xs
    if xs.Length = 0 then invalidArg (nameof xs) "cannot summarize an empty sample"
    match xs |> Array.tryFind (fun x -> Double.IsNaN x || Double.IsInfinity x) with
    | Some bad -> invalidArg (nameof xs) $"sample contains a non-finite value ({bad})"
    | None -> ()
    let n = xs.Length
    let mean = Array.average xs
    if n = 1 then
        { N = 1; Mean = mean; StdDev = 0.0; Ci95 = (mean, mean) }
    else
        let var = (xs |> Array.sumBy (fun x -> (x - mean) ** 2.0)) / float (n - 1)
        let sd = sqrt var
        let half = tQuantile975 (n - 1) * sd / sqrt (float n)
        { N = n; Mean = mean; StdDev = sd; Ci95 = (mean - half, mean + half) }

/// mean(b) − mean(a) with its Welch 95% interval (Welch–Satterthwaite degrees of freedom); each group needs two values.
let differenceCi95 (a: float seq) (b: float seq) =
    let a, b = Seq.toArray a, Seq.toArray b
    if a.Length < 2 || b.Length < 2 then invalidArg (nameof a) $"each group needs at least 2 values, got {a.Length} and {b.Length}"
    let sa, sb = summarize a, summarize b
    let va, vb = sa.StdDev ** 2.0 / float a.Length, sb.StdDev ** 2.0 / float b.Length
    let diff = sb.Mean - sa.Mean
    let se = sqrt (va + vb)
    if se = 0.0 then diff, (diff, diff)
    else
        let df = (va + vb) ** 2.0 / (va ** 2.0 / float (a.Length - 1) + vb ** 2.0 / float (b.Length - 1))
        let half = tQuantile975 (max 1 (int (Math.Floor df))) * se
        diff, (diff - half, diff + half)
