/// Sharding: shares from arguments and schedulers' environments, partials that round-trip, merge's refusals, and
/// three shard processes merged against one process.
module MechInterp.Analysis.Tests.ShardTests

open System
open System.Diagnostics
open System.IO
open System.Text.Json.Nodes
open Xunit
open MechInterp.Analysis.Report

let private env (pairs: (string * string) list) = fun name -> pairs |> List.tryFind (fst >> (=) name) |> Option.map snd

let private shareOf = function Ok(Some(s: Shards.Share)) -> s.Index, s.Count | other -> failwithf "expected a share, got %A" other

[<Fact>]
let ``--shard i/n parses, and out-of-range shares are refused`` () =
    Assert.Equal((2, 3), match Shards.parse "2/3" with Ok s -> (s.Index, s.Count) | Error e -> failwith e)
    for bad in [ "3/3"; "-1/3"; "1/0"; "a/3"; "1" ] do
        Assert.True(Result.isError (Shards.parse bad), bad)

[<Fact>]
let ``the share comes from a Slurm array or a Kubernetes Indexed Job`` () =
    Assert.Equal((2, 4), shareOf (Shards.fromEnvironment (env [ "SLURM_ARRAY_TASK_ID", "7"; "SLURM_ARRAY_TASK_MIN", "5"; "SLURM_ARRAY_TASK_COUNT", "4" ]) None))
    Assert.Equal((1, 3), shareOf (Shards.fromEnvironment (env [ "SLURM_ARRAY_TASK_ID", "12"; "SLURM_ARRAY_TASK_MIN", "10"; "SLURM_ARRAY_TASK_STEP", "2"; "SLURM_ARRAY_TASK_COUNT", "3" ]) None))
    Assert.Equal((4, 6), shareOf (Shards.fromEnvironment (env [ "JOB_COMPLETION_INDEX", "4" ]) (Some 6)))
    Assert.Equal((0, 2), shareOf (Shards.fromEnvironment (env [ "JOB_COMPLETION_INDEX", "0"; "MECHINTERP_SHARD_COUNT", "2" ]) None))
    Assert.Equal(Ok None, Shards.fromEnvironment (env []) None)
    match Shards.fromEnvironment (env [ "JOB_COMPLETION_INDEX", "1" ]) None with
    | Error e -> Assert.Contains("--shard-count", e)
    | other -> failwithf "a Kubernetes index without a count must fail, got %A" other
    Assert.True(Result.isError (Shards.fromEnvironment (env [ "JOB_COMPLETION_INDEX", "5"; "MECHINTERP_SHARD_COUNT", "5" ]) None))

[<Fact>]
let ``shares are disjoint and cover every unit`` () =
    let units = [ 0 .. 10 ]
    let shares = [ for i in 0 .. 2 -> Shards.assign { Index = i; Count = 3; Source = "" } (fun _ -> 1.0) units ]
    Assert.Equal<int list>(units, shares |> List.concat |> List.sort)
    Assert.All(shares, fun s -> Assert.InRange(s.Length, 3, 4))

[<Fact>]
let ``shares balance by cost, costliest first, and equal costs give round robin`` () =
    let costs = [ 10.0; 1.0; 1.0; 1.0; 1.0; 6.0; 2.0 ]
    let owners = Shards.owners 2 id costs
    // 10 → 0; 6, 2, 1, 1 → 1 (up to 10); the tie at 10 → 0; the last 1 → 1: 11 each, where round robin gives 14 and 8.
    Assert.Equal<int list>([ 0; 1; 1; 0; 1; 1; 1 ], owners)
    let load shard = List.zip owners costs |> List.filter (fst >> (=) shard) |> List.sumBy snd
    Assert.Equal((11.0, 11.0), (load 0, load 1))
    Assert.Equal<int list>([ for k in 0 .. 10 -> k % 3 ], Shards.owners 3 (fun _ -> 1.0) [ 0 .. 10 ])
    // A cost that is not a positive number counts as 1.
    Assert.Equal<int list>(Shards.owners 2 (fun _ -> 1.0) [ 0 .. 3 ], Shards.owners 2 (fun k -> [| nan; -1.0; 0.0; infinity |].[k]) [ 0 .. 3 ])

[<Fact>]
let ``a partial round-trips outputs with unions, matrices, options and NaN`` () =
    let figure =
        Figure.create "f" "t" "c" 1
            [ { Panel.empty "p" with
                  Series = [ Heatmap(array2D [ [ 1.0; nan ]; [ infinity; -0.5 ] ], 0.0, 1.0)
                             Points("a", [| 0.1 |], [| 1e-300 |], "#000000", Some [| "#ffffff" |])
                             HLine(0.3333333333333333, "third") ] } ]
    let output =
        { Answer = { Question = "q"; Verdict = "v"; Evidence = "e"; KeyNumber = "k"; Seeds = 2; Runs = 3; Converged = 1 }
          Sections = [ { ReportSection.create "s" "S" with Figures = [ figure ] } ]
          Results = Report.obj [ "x", Report.number 0.1 ] }
    let back = Partial.ofNode<ExperimentOutput> (JsonNode.Parse((Partial.toNode output).ToJsonString()) |> nonNull)
    Assert.Equal(output.Answer, back.Answer)
    Assert.Equal(output.Results.ToJsonString(), back.Results.ToJsonString())
    let series = back.Sections.Head.Figures.Head.Panels.Head.Series
    match series with
    | [ Heatmap(z, 0.0, 1.0); Points("a", _, ys, _, Some [| "#ffffff" |]); HLine(y, "third") ] ->
        Assert.Equal(2, Array2D.length2 z)
        Assert.True(Double.IsNaN z.[0, 1] && Double.IsPositiveInfinity z.[1, 0] && z.[1, 1] = -0.5)
        Assert.Equal(1e-300, ys.[0])
        Assert.Equal(0.3333333333333333, y)
    | other -> failwithf "series came back as %A" other

/// A registry of two cheap experiments: units return their seeds' squares.
let private registry : Experiment list =
    let experiment name (settings: (string * int list) list) =
        { Name = name; Description = name
          Units = fun _ -> [ for setting, seeds in settings -> WorkUnit.create setting setting seeds (fun () -> seeds |> List.map (fun s -> s * s)) ]
          Combine =
            fun _ partials ->
                let total = partials |> Seq.sumBy (fun kv -> Partial.ofNode<int list> kv.Value |> List.sum)
                { Answer = { Question = name; Verdict = string total; Evidence = ""; KeyNumber = ""; Seeds = 0; Runs = 0; Converged = 0 }
                  Sections = []; Results = Report.obj [ "total", Report.integer (int64 total) ] } }
    // s1 costs five of the others: shards balance by cost, and merge must expect the same owners.
    [ experiment "a" [ "s1", [ 0; 1 ]; "s2", [ 0; 1 ]; "s3", [ 2 ] ] |> Experiment.withCosts (fun _ id -> if id = "s1" then 5.0 else 1.0)
      experiment "b" [ "t", [ 5 ] ] ]

let private writeShards (dir: string) (count: int) =
    let all = [ for e in registry do for u in e.Units Quick -> e, u ]
    for i in 0 .. count - 1 do
        let share : Shards.Share = { Index = i; Count = count; Source = "test" }
        let records = Runner.runUnits ignore "" (Shards.assign share Shards.unitCost all)
        Shards.write dir { Format = Shards.format; Suite = "test"; Scale = "quick"; Shard = i; Count = count
                           Experiments = [ "a"; "b" ]; Units = records } |> ignore

let private errorsOf (dir: string) =
    match Shards.read dir "test" registry with
    | Error problems -> String.Join("\n", problems)
    | Ok _ -> failwith "merge accepted inconsistent shards"

let private freshDir () =
    let dir = Path.Combine(Path.GetTempPath(), $"mechinterp-shards-{Guid.NewGuid():N}")
    Directory.CreateDirectory dir |> ignore
    dir

[<Fact>]
let ``merge combines complete shards and names what is missing, doubled or of another count`` () =
    let dir = freshDir ()
    try
        writeShards dir 3
        match Shards.read dir "test" registry with
        | Ok merged ->
            let outputs = Runner.combine merged.Scale merged.Experiments merged.Partials
            Assert.Equal<string list>([ "6"; "25" ], outputs |> List.map (fun (_, o) -> o.Answer.Verdict))   // a: 0+1 + 0+1 + 4, b: 25
        | Error e -> failwithf "complete shards refused: %A" e
        // A shard of another count.
        let other = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "shard-0-of-3.json"))) |> nonNull
        other.["Count"] <- JsonValue.Create 4
        MechInterp.IO.AtomicFile.WriteAllText(Path.Combine(dir, "shard-0-of-4.json"), other.ToJsonString())
        let e = errorsOf dir
        Assert.Contains("disagree on the shard count", e)
        Assert.Contains("shard-0-of-4.json", e)
        File.Delete(Path.Combine(dir, "shard-0-of-4.json"))
        // A missing shard.
        let one = Path.Combine(dir, "shard-1-of-3.json")
        let kept = File.ReadAllText one
        File.Delete one
        let e = errorsOf dir
        Assert.Contains("shard 1 of 3 is missing", e)
        Assert.Contains("unit a/s2 is missing", e)
        // A unit removed from its shard.
        let node = JsonNode.Parse kept |> nonNull
        let units = (node.["Units"] |> nonNull).AsArray()
        let removed = units.[0] |> nonNull
        units.RemoveAt 0
        MechInterp.IO.AtomicFile.WriteAllText(one, node.ToJsonString())
        let e = errorsOf dir
        Assert.Contains($"""unit {removed.["Experiment"]}/{removed.["Id"]} is missing""", e)
        // The same unit twice: in its own shard and in another, so its seeds are trained twice.
        units.Insert(0, removed.DeepClone())
        MechInterp.IO.AtomicFile.WriteAllText(one, node.ToJsonString())
        let zero = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "shard-0-of-3.json"))) |> nonNull
        (zero.["Units"] |> nonNull).AsArray().Add(removed.DeepClone())
        MechInterp.IO.AtomicFile.WriteAllText(Path.Combine(dir, "shard-0-of-3.json"), zero.ToJsonString())
        let e = errorsOf dir
        Assert.Contains($"""unit {removed.["Experiment"]}/{removed.["Id"]} appears 2 times""", e)
        Assert.Contains("is trained twice", e)
    finally
        Directory.Delete(dir, true)

let private repoRoot () =
    let rec up (dir: DirectoryInfo | null) =
        match dir with
        | null -> failwith $"no MechInterp.sln above {AppContext.BaseDirectory}"
        | d when File.Exists(Path.Combine(d.FullName, "MechInterp.sln")) -> d.FullName
        | d -> up d.Parent
    up (DirectoryInfo AppContext.BaseDirectory)

let private runner () =
    let dll = Path.Combine(repoRoot (), "src", "Experiments", "bin", "Release", "net10.0", "linux-x64", "MechInterp.Experiments.dll")
    Assert.True(File.Exists dll, $"{dll} is missing: build Release first (dotnet fsi build.fsx build)")
    dll

let private startWith (environment: (string * string) list) (workDir: string) (args: string list) =
    let info = ProcessStartInfo("dotnet", runner () :: args, WorkingDirectory = workDir, RedirectStandardOutput = true, RedirectStandardError = true)
    info.Environment.["MECHINTERP_THREADS"] <- "1"
    for name in [ "SLURM_ARRAY_TASK_ID"; "SLURM_ARRAY_TASK_MIN"; "SLURM_ARRAY_TASK_STEP"; "SLURM_ARRAY_TASK_COUNT"; "JOB_COMPLETION_INDEX"; "MECHINTERP_SHARD_COUNT" ] do
        info.Environment.Remove name |> ignore
    for name, value in environment do info.Environment.[name] <- value
    let p = nonNull (Process.Start info)
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    fun () ->
        if not (p.WaitForExit(TimeSpan.FromMinutes 4.0)) then
            p.Kill true
            failwith $"""MechInterp.Experiments {String.Join(" ", args)} ran past 4 minutes"""
        p.ExitCode, out.Result + err.Result

let private start = startWith []

/// Largest |a − b| over every number of two results files, skipping wall times; strings and shapes must match.
let rec private maxDifference (path: string) (a: JsonNode | null) (b: JsonNode | null) : float =
    match a, b with
    | null, null -> 0.0
    | (:? JsonObject as x), (:? JsonObject as y) ->
        Assert.Equal<string list>(x |> Seq.map _.Key |> List.ofSeq, y |> Seq.map _.Key |> List.ofSeq)
        x |> Seq.filter (fun kv -> not (kv.Key.Contains "seconds")) |> Seq.map (fun kv -> maxDifference $"{path}/{kv.Key}" kv.Value y.[kv.Key]) |> Seq.fold max 0.0
    | (:? JsonArray as x), (:? JsonArray as y) ->
        Assert.True(x.Count = y.Count, $"{path}: {x.Count} against {y.Count} elements")
        Seq.zip x y |> Seq.mapi (fun i (p, q) -> maxDifference $"{path}[{i}]" p q) |> Seq.fold max 0.0
    | (:? JsonValue as x), (:? JsonValue as y) when x.GetValueKind() = Text.Json.JsonValueKind.Number ->
        abs (x.GetValue<float>() - y.GetValue<float>())
    | x, y ->
        Assert.True(nonNull(x).ToJsonString() = nonNull(y).ToJsonString(), $"{path}: {x} against {y}")
        0.0

[<Fact>]
let ``three shard processes merged, and --jobs 2, equal one process`` () =
    let dir = freshDir ()
    try
        // Shard 0 from the argument, shard 1 as a Slurm array task (ids 10..12), shard 2 as a Kubernetes Indexed Job pod.
        let shardArgs = [ "--suite"; "smoke"; "--out"; "sharded" ]
        let shards =
            [ start dir (shardArgs @ [ "--shard"; "0/3" ]), "--shard 0/3"
              startWith [ "SLURM_ARRAY_TASK_ID", "11"; "SLURM_ARRAY_TASK_MIN", "10"; "SLURM_ARRAY_TASK_COUNT", "3" ] dir shardArgs, "Slurm: SLURM_ARRAY_TASK_ID 11"
              startWith [ "JOB_COMPLETION_INDEX", "2"; "MECHINTERP_SHARD_COUNT", "3" ] dir shardArgs, "Kubernetes: JOB_COMPLETION_INDEX 2" ]
        for i, (wait, source) in List.indexed shards do
            let code, output = wait ()
            Assert.True((code = 0), $"a shard failed ({code}):\n{output}")
            Assert.Contains($"shard {i}/3 ({source}", output)
            Assert.Contains("3 of 9 units", output)
            Assert.Matches(@"\[unit 1/3\] .* 3 remaining including this one", output)
        // A shard missing: merge names it and writes nothing.
        let two = Path.Combine(dir, "sharded", "partials", "shard-2-of-3.json")
        File.Move(two, two + ".away")
        let code, output = start dir [ "merge"; "--suite"; "smoke"; "--out"; "sharded" ] ()
        Assert.NotEqual(0, code)
        Assert.Contains("shard 2 of 3 is missing", output)
        Assert.False(Directory.Exists(Path.Combine(dir, "sharded", "results")), "a failed merge wrote results")
        Assert.False(Directory.Exists(Path.Combine(dir, "sharded", "report")), "a failed merge wrote a report")
        File.Move(two + ".away", two)
        let code, output = start dir [ "merge"; "--suite"; "smoke"; "--out"; "sharded" ] ()
        Assert.True((code = 0), $"merge failed ({code}):\n{output}")
        let code, output = start dir [ "--suite"; "smoke"; "--out"; "single" ] ()
        Assert.True((code = 0), $"the single run failed ({code}):\n{output}")
        Assert.Contains("[unit 9/9]", output)
        Assert.True(File.Exists(Path.Combine(dir, "sharded", "report", "index.html")))
        // --jobs 2: two shard processes started, awaited and merged by one command.
        let code, output = start dir [ "--suite"; "smoke"; "--out"; "jobs"; "--jobs"; "2" ] ()
        Assert.True((code = 0), $"the --jobs 2 run failed ({code}):\n{output}")
        Assert.Contains("2 jobs at once", output)
        Assert.Contains("shard 1/2", output)
        Assert.Contains("merge: 9 units of 2 experiments", output)
        Assert.True(File.Exists(Path.Combine(dir, "jobs", "report", "index.html")))
        for run in [ "sharded"; "jobs" ] do
            for name in [ "superposition"; "residual_hypothesis" ] do
                let read run = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, run, "results", $"{name}.json")))
                let worst = maxDifference name (read "single") (read run)
                // The same units train the same batches in both: equal up to float noise.
                printfn "%s: largest difference between %s and one process: %g" name run worst
                Assert.True(worst <= 1e-5, $"{name}: {run} differs from one process by {worst}")
    finally
        Directory.Delete(dir, true)
