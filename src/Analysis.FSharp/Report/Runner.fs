/// Runs experiments' units in this process with a progress line per unit (which one, how many remain, an ETA), and
/// turns partials into the results files and the report, whether they came from this process or from shards.
module MechInterp.Analysis.Report.Runner

open System
open System.Diagnostics
open System.IO
open System.Text.Json.Nodes

let private duration (t: TimeSpan) =
    if t.TotalHours >= 1.0 then $"{int t.TotalHours} h {t.Minutes:D2} min"
    elif t.TotalMinutes >= 1.0 then $"{int t.TotalMinutes} min {t.Seconds:D2} s"
    else $"{t.TotalSeconds:F0} s"

/// Runs units one after another, logging before each which unit it is, how many remain and the ETA (the mean time
/// of the units done so far times the units left), and after it how long it took. `label` opens each line (e.g. the shard).
type Progress(log: string -> unit, label: string, total: int) =
    let clock = Stopwatch.StartNew()
    let mutable finished = 0

    member _.Run(e: Experiment, u: WorkUnit) : Shards.UnitRecord =
        let k = finished
        let remaining = total - k
        let eta =
            if k = 0 then "ETA after the first unit"
            else "ETA " + duration (TimeSpan.FromSeconds(clock.Elapsed.TotalSeconds / float k * float remaining))
        let seeds = if u.Seeds.IsEmpty then "" else $""", seeds {String.Join(",", u.Seeds)}"""
        log $"{label}[unit {k + 1}/{total}] {e.Name}/{u.Id}{seeds}: {remaining} remaining including this one, {eta}"
        let unitClock = Stopwatch.StartNew()
        let partial = u.Run()
        finished <- finished + 1
        log $"{label}[unit {k + 1}/{total}] {e.Name}/{u.Id} done in {duration unitClock.Elapsed}; {duration clock.Elapsed} so far"
        { Experiment = e.Name; Id = u.Id; Setting = u.Setting; Seeds = u.Seeds
          Seconds = unitClock.Elapsed.TotalSeconds; Partial = partial }

/// Runs `units` in order with a progress line before and after each.
let runUnits (log: string -> unit) (label: string) (units: (Experiment * WorkUnit) list) : Shards.UnitRecord list =
    let progress = Progress(log, label, units.Length)
    units |> List.map progress.Run

/// Writes <out>/results/<name>.json.
let writeResults (log: string -> unit) (out: string) (e: Experiment) (o: ExperimentOutput) =
    let path = Report.writeResults (Path.Combine(out, "results")) e.Name o.Answer o.Results
    log $"== {e.Name}: numbers in {path}"
    log $"   answer: {o.Answer.Verdict}"

/// Writes <out>/report/index.html (and its PNGs) with the summary first; returns the page's path.
let writeReport (out: string) (outputs: (Experiment * ExperimentOutput) list) =
    let summary = Report.summarySection [ for e, o in outputs -> e.Name, o.Answer ]
    let sections = summary :: [ for _, o in outputs do yield! o.Sections ]
    Report.write (Path.Combine(out, "report")) "MechInterp report" sections

/// The whole job in this process: each experiment's units, then its results file as soon as they are done (a crash
/// later keeps it), then the report.
let runAll (log: string -> unit) (out: string) (scale: Scale) (experiments: Experiment list) =
    let units = [ for e in experiments -> e, e.Units scale ]
    let progress = Progress(log, "", units |> List.sumBy (snd >> List.length))
    let outputs =
        [ for e, us in units ->
              log $"\n== {e.Name}: {e.Description}"
              let partials = [ for u in us -> let r = progress.Run(e, u) in r.Id, r.Partial ] |> Map.ofList
              let output = e.Combine scale partials
              writeResults log out e output
              e, output ]
    writeReport out outputs

/// Every experiment's outputs from its partials. Nothing is written: a combine that throws leaves no file behind.
let combine (scale: Scale) (experiments: Experiment list) (partials: Map<string, Map<string, JsonNode>>) =
    [ for e in experiments ->
          let mine = partials.TryFind e.Name |> Option.defaultValue Map.empty
          e, e.Combine scale mine ]

/// Writes every experiment's results file and the report (what merge writes, once every check has passed).
let write (log: string -> unit) (out: string) (outputs: (Experiment * ExperimentOutput) list) =
    for e, o in outputs do writeResults log out e o
    writeReport out outputs
