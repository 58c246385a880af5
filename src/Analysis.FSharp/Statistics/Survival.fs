/// Times to an event (a run learning its task) where some runs never reach it within the cap: those times
/// are censored, known only to exceed the cap. The log-rank statistic compares two groups of such times;
/// its p-value here comes from relabelling the groups (exact for the small seed counts experiments use).
module MechInterp.Analysis.Statistics.Survival

open System

/// One run's time: the step of the event, or the step at which observation stopped without it.
type Observation =
    { Time: float
      /// True when the event happened at Time; false when the run was censored there.
      Event: bool }

let observed (time: float) = { Time = time; Event = true }
let censored (time: float) = { Time = time; Event = false }

/// From an optional event step and the step observation ended.
let ofStep (eventStep: int option) (cap: int) =
    match eventStep with
    | Some s -> observed (float s)
    | None -> censored (float cap)

type LogRank =
    { /// Σ over event times of (events in b − expected events in b): negative when b's events come later or fewer.
      ObservedMinusExpected: float
      /// The log-rank chi-square U² / V (0 when no event happened in either group).
      ChiSquare: float
      /// Two-sided p-value: the share of relabellings whose chi-square is at least the observed one.
      PValue: float
      Permutations: int }

let private check (name: string) (xs: Observation[]) =
    if xs.Length < 1 then invalidArg name "each group needs at least one run"
    for x in xs do
        if not (Double.IsFinite x.Time) || x.Time < 0.0 then invalidArg name $"time {x.Time} must be finite and non-negative"

/// U (events of the group flagged true minus expected) and V (its variance) over the pooled observations.
let private statistic (pooled: Observation[]) (inB: bool[]) =
    let times = pooled |> Array.filter (fun o -> o.Event) |> Array.map (fun o -> o.Time) |> Array.distinct |> Array.sort
    let mutable u, v = 0.0, 0.0
    for t in times do
        let mutable n, nB, d, dB = 0.0, 0.0, 0.0, 0.0
        for j in 0 .. pooled.Length - 1 do
            let o = pooled.[j]
            if o.Time >= t then
                n <- n + 1.0
                if inB.[j] then nB <- nB + 1.0
            if o.Event && o.Time = t then
                d <- d + 1.0
                if inB.[j] then dB <- dB + 1.0
        u <- u + (dB - d * nB / n)
        if n > 1.0 then v <- v + d * (nB / n) * (1.0 - nB / n) * (n - d) / (n - 1.0)
    u, v

let private chiSquare (u: float, v: float) = if v > 0.0 then u * u / v else 0.0

/// Compares group b's times against group a's (e.g. a variant against the baseline).
let logRank (a: Observation seq) (b: Observation seq) =
    let a, b = Seq.toArray a, Seq.toArray b
    check (nameof a) a
    check (nameof b) b
    let pooled = Array.append a b
    let n, nb = pooled.Length, b.Length
    let flags (members: int[]) =
        let f = Array.zeroCreate n
        for j in members do f.[j] <- true
        f
    let observedGroup = [| a.Length .. n - 1 |]
    let observedU, observedV = statistic pooled (flags observedGroup)
    let observedChi = chiSquare (observedU, observedV)
    let tolerance = 1e-12 * (1.0 + observedChi)
    let extreme = ref 0
    let count =
        Significance.relabellings n nb observedGroup (fun group ->
            if chiSquare (statistic pooled (flags group)) >= observedChi - tolerance then extreme.Value <- extreme.Value + 1)
    { ObservedMinusExpected = observedU; ChiSquare = observedChi
      PValue = float extreme.Value / float count; Permutations = count }
