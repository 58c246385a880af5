/// The SAE study as an experiment of the main job: its settings per scale, artifacts/results/sae.json, the
/// report section 'sae' and its answer.
module MechInterp.Analysis.Dictionary.SaeSection

open System
open System.IO
open System.Text.Json.Nodes
open MechInterp.Hooks
open MechInterp.ToyModels
open MechInterp.Analysis.Report
open MechInterp.Analysis.Dictionary.SaeStudy

/// The goal of 4a and 4b: MMCS at least this.
let mmcsGoal = 0.9

let private palette = [| "#1f77b4"; "#d62728"; "#2ca02c"; "#9467bd"; "#ff7f0e"; "#8c564b" |]
let private colorOf a = palette.[List.findIndex ((=) a) Architecture.all]

/// Settings per scale. Quick: what fits the main job's 3 minutes; Full: longer training and wider dictionaries.
let settings (scale: Scale) : Settings =
    let quick = scale = Quick
    let superposition = MechInterp.Analysis.Superposition.Experiment.config scale
    let training steps lr = { SaeTraining.defaults with Steps = steps; LearningRate = lr; LogEvery = max 1 (steps / 10) }
    // Penalties found by trial on these benchmarks (inputs scaled to E‖x‖ = √d_in): JumpReLU at λ 3 reached MMCS 0.95
    // on the synthetic dictionary where λ 1 left L0 at 5.8 and MMCS 0.90; the standard SAE at λ 10 collapsed (explained
    // variance 0.30), at λ 5 reached MMCS 0.57 (explained variance 0.65) and at λ 3 0.88 in 600 steps.
    { Architectures = Architecture.all
      Toy =
        { Setting =
            { superposition.Main.Head with
                Name = "relu-20-5"; Densities = [ 0.1; 0.03; 0.01 ]; Replicates = 3; Seed = 10L
                Training = { superposition.Main.Head.Training with Steps = (if quick then 2000 else 10_000) } }
          Sae = { DSae = 20; K = 1; StandardLambda = 3.0; JumpReluLambda = 3.0; Training = training (if quick then 800 else 5000) 3e-3 } }
      Synthetic =
        { Dim = 256; Features = 512; MeanActive = 5.0; Decay = 10.0
          Sae = { DSae = (if quick then 512 else 1024); K = 5; StandardLambda = 2.0; JumpReluLambda = 3.0
                  Training = training (if quick then 400 else 4000) 3e-3 } }
      Language =
        { HookName = HookNames.ResidMid 1; Layer = 1
          TrainSequences = (if quick then 2048 else 16384); HeldOutSequences = (if quick then 128 else 512); Seed = 20
          Sae = { DSae = 512; K = 8; StandardLambda = 3.0; JumpReluLambda = 3.0; Training = training (if quick then 600 else 6000) 3e-3 } }
      MoeCheckpoint = Path.Combine("artifacts", "checkpoints", "moe.safetensors")
      CheckpointDir = Some(Path.Combine("artifacts", "checkpoints")) }

let private f3 (x: float) = if Double.IsFinite x then x.ToString("F3") else "n/a"

/// Toy benchmark: does the best architecture reach the goal at every density?
let private toyBest (r: StudyResult) =
    [ for p in r.Toy -> p.Density, p.Represented, (p.Runs |> List.maxBy (fun run -> run.Mmcs)) ]

let private syntheticBest (r: StudyResult) = r.Synthetic |> List.maxBy (fun run -> run.Mmcs)

let private probesOf (r: StudyResult) a = r.Language.Probes |> List.find (fun (b, _) -> b = a) |> snd

/// The answer: 4a and 4b against the goal, and the toy language's best latents against the baselines.
let answer (r: StudyResult) : Answer =
    let toy = toyBest r
    let toyMet = toy |> List.filter (fun (_, _, run) -> run.Mmcs >= mmcsGoal) |> List.length
    let syn = syntheticBest r
    let lang = r.Language.Runs |> List.maxBy (fun run -> meanBestF1 "sae" (probesOf r run.Architecture))
    let probes = probesOf r lang.Architecture
    let saeF1, randomF1, coordF1 = meanBestF1 "sae" probes, meanBestF1 "random directions" probes, meanBestF1 "residual coordinates" probes
    let saeThresholdF1 = meanBestF1 "sae, best threshold" probes
    let worstToy = toy |> List.minBy (fun (_, _, run) -> run.Mmcs)
    let d, _, w = worstToy
    let runs = r.Toy |> List.sumBy (fun p -> p.Runs.Length) |> fun n -> n + r.Synthetic.Length + r.Language.Runs.Length
    let learned (run: Run) = run.Metrics.ExplainedVariance >= 0.8
    let all = [ for p in r.Toy do yield! p.Runs ] @ r.Synthetic @ r.Language.Runs
    let goals = toyMet = toy.Length && syn.Mmcs >= mmcsGoal
    { Question = "Do sparse autoencoders recover the features a model packs in superposition, checked against ground truth?"
      Verdict =
        (if goals then "Yes" else "Partly") +
        $": MMCS ≥ {mmcsGoal} at {toyMet} of {toy.Length} toy-model sparsities (best architecture each) and {f3 syn.Mmcs} on the synthetic dictionary ({Architecture.name syn.Architecture}); on the toy language the best latents reach mean F1 {f3 saeF1} firing ({f3 saeThresholdF1} at their best threshold) against {f3 randomF1} for random directions at theirs"
      Evidence =
        $"Toy model n = 20, m = 5: lowest best-architecture MMCS {f3 w.Mmcs} at 1 − S = {d} ({Architecture.name w.Architecture}, {w.TrueFeatures} represented features). "
        + $"Synthetic dictionary (512 features in 256 dimensions, true L0 {syn.TrueL0:F2}): MMCS {f3 syn.Mmcs}, Hungarian-matched mean |cos| {f3 syn.Matched}, L0 {syn.Metrics.L0:F2}. "
        + $"Toy language ({Architecture.name lang.Architecture}, {r.Language.HeldOutTokens} held-out tokens): mean best-latent F1 {f3 saeF1} (firing) and {f3 saeThresholdF1} (best threshold); random directions {f3 randomF1}, residual coordinates {f3 coordF1} (both at their best threshold); CE loss recovered {f3 (match lang.Splice with Some s -> s.CeLossRecovered | None -> nan)}."
      KeyNumber = $"synthetic-dictionary MMCS {f3 syn.Mmcs} ({Architecture.name syn.Architecture}; one SAE seed per architecture, no interval)"
      Seeds = 1
      Runs = runs
      Converged = all |> List.filter learned |> List.length }

let private metricRow (run: Run) =
    let m = run.Metrics
    [ run.Benchmark; Architecture.name run.Architecture; string run.Sae.Config.DSae
      (match run.Architecture with TopK | BatchTopK -> string run.Sae.Config.K | _ -> "")
      $"{m.L0:F2}"; (if Double.IsFinite run.TrueL0 then $"{run.TrueL0:F2}" else ""); f3 m.ExplainedVariance; $"{m.Mse:E2}"; f3 m.CosineSimilarity
      string m.Dead; string m.Dense; f3 run.Mmcs; f3 run.Matched
      (match run.Splice with Some s -> f3 s.CeLossRecovered | None -> "")
      (match run.Splice with Some s -> f3 s.KlRecovered | None -> "")
      $"{run.Seconds:F1}" ]

let private metricsTable (title: string) (runs: Run list) =
    { Title = title
      Header = [ "benchmark"; "architecture"; "d_sae"; "k"; "L0"; "true L0"; "explained variance"; "MSE"; "cosine"; "dead"; "dense"
                 "MMCS"; "matched |cos|"; "CE loss recovered"; "KL recovered"; "seconds" ]
      Rows = runs |> List.map metricRow }

let private mmcsFigure (r: StudyResult) =
    let densities = r.Toy |> List.map (fun p -> p.Density) |> Array.ofList
    Figure.create "mmcs" "Recovering the true features"
        $"""Left: the toy model (n = 20, m = 5, ReLU): MMCS over the represented features at each feature density 1 − S, per architecture (log x axis); the dashed line is the goal {mmcsGoal}. Right: the synthetic dictionary (512 features in 256 dimensions): MMCS (bars) per architecture, in the order {String.Join(", ", r.Synthetic |> List.map (fun run -> Architecture.name run.Architecture))}."""
        2
        [ { Panel.empty "Toy model: MMCS by density" with
              XLabel = "feature density 1 − S"; YLabel = "MMCS"; XLog = true; ShowLegend = true
              Series =
                [ for a in r.Settings.Architectures do
                      let ys = r.Toy |> List.map (fun p -> (p.Runs |> List.find (fun run -> run.Architecture = a)).Mmcs) |> Array.ofList
                      yield Line(Architecture.name a, densities, ys, colorOf a, true)
                  yield HLine(mmcsGoal, "goal") ] }
          { Panel.empty "Synthetic dictionary: MMCS" with
              XLabel = "architecture"; YLabel = "MMCS"
              Series =
                [ Bars("MMCS", r.Synthetic |> List.mapi (fun i _ -> float i) |> Array.ofList, r.Synthetic |> List.map (fun run -> run.Mmcs) |> Array.ofList,
                       r.Synthetic |> List.map (fun run -> colorOf run.Architecture) |> Array.ofList)
                  HLine(mmcsGoal, "goal") ] } ]

let private frontierFigure (r: StudyResult) =
    let panel title (runs: Run list) =
        { Panel.empty title with
            XLabel = "L0"; YLabel = "explained variance"; ShowLegend = true
            Series = [ for run in runs -> Points(Architecture.name run.Architecture, [| run.Metrics.L0 |], [| run.Metrics.ExplainedVariance |], colorOf run.Architecture, None) ] }
    Figure.create "frontier" "Sparsity against reconstruction"
        "Each SAE's L0 (mean active latents per input) against its explained variance on held-out inputs, per benchmark; up and to the left is better. Toy model: the sparsest density shown (1 − S = 0.01 at the main job's scale)."
        3
        [ panel "Toy model (sparsest)" (r.Toy |> List.minBy (fun p -> p.Density)).Runs
          panel "Synthetic dictionary" r.Synthetic
          panel "Toy language" r.Language.Runs ]

let private probingFigure (r: StudyResult) (a: Architecture) =
    let rows = probesOf r a
    let xs = rows |> List.mapi (fun i _ -> float i) |> Array.ofList
    let familyLine name color =
        Line(name, xs, rows |> List.map (fun row -> row.Best |> List.find (fun (n, _) -> n = name) |> snd |> Option.map (fun d -> d.F1) |> Option.defaultValue nan) |> Array.ofList, color, true)
    // One wide panel: twenty-odd feature values side by side.
    fun figure -> { figure with PanelWidth = 900; PanelHeight = 340 }
    <| Figure.create "probing" $"Single latents against the toy language's labels ({Architecture.name a})"
        ("Best F1 at predicting each labelled feature value from one candidate: an SAE latent (fires where positive, and at its best threshold), a random direction, a residual-stream coordinate or an expert's router weight (each at its best threshold and sign). Values in order: "
         + String.Join(", ", rows |> List.map (fun row -> $"{row.Feature}={row.Value}")) + ".")
        1
        [ { Panel.empty "Best single-candidate F1 per feature value" with
              XLabel = "feature value (index)"; YLabel = "F1"; ShowLegend = true
              Series =
                [ familyLine "sae" palette.[0]
                  familyLine "sae, best threshold" palette.[4]
                  familyLine "random directions" palette.[1]
                  familyLine "residual coordinates" palette.[2]
                  familyLine "expert weights" palette.[3] ] } ]

let private expertFigure (r: StudyResult) (a: Architecture) =
    let shares = r.Language.Experts |> List.find (fun (b, _) -> b = a) |> snd
    let top = shares |> List.sortByDescending (fun (_, fires, _, _, _) -> fires) |> List.truncate 40
    let xs = top |> List.mapi (fun i _ -> float i) |> Array.ofList
    fun figure -> { figure with PanelWidth = 900; PanelHeight = 340 }
    <| Figure.create "experts" $"Latents and experts ({Architecture.name a})"
        $"For the {top.Length} most frequent latents (of {shares.Length} firing on enough tokens), the share of their firings routed to their most common layer-{r.Settings.Language.Layer} expert (bars, coloured by that expert), and the same share for as many random tokens (line): a latent above the line routes to one expert more than chance."
        1
        [ { Panel.empty "Top-expert share per latent" with
              XLabel = "latent (by frequency)"; YLabel = "share of firings"; ShowLegend = true
              Series =
                [ Bars("top expert share", xs, top |> List.map (fun (_, _, _, s, _) -> s) |> Array.ofList,
                       top |> List.map (fun (_, _, e, _, _) -> palette.[e % palette.Length]) |> Array.ofList)
                  Line("random tokens", xs, top |> List.map (fun (_, _, _, _, b) -> b) |> Array.ofList, "#000000", false) ] } ]

/// The report section.
let section (r: StudyResult) : ReportSection =
    let toy = toyBest r
    let syn = syntheticBest r
    let lang = r.Language.Runs |> List.maxBy (fun run -> meanBestF1 "sae" (probesOf r run.Architecture))
    let probes = probesOf r lang.Architecture
    let absorption = r.Language.Absorption |> List.find (fun (b, _) -> b = lang.Architecture) |> snd
    let shares = r.Language.Experts |> List.find (fun (b, _) -> b = lang.Architecture) |> snd
    let meanShare = if shares.IsEmpty then nan else shares |> List.averageBy (fun (_, _, _, s, _) -> s)
    let meanBaseline = if shares.IsEmpty then nan else shares |> List.averageBy (fun (_, _, _, _, b) -> b)
    let concentrated = shares |> List.filter (fun (_, _, _, s, _) -> s >= 0.9) |> List.length
    let t = r.Settings.Toy
    let s = r.Settings.Synthetic
    let l = r.Settings.Language
    { ReportSection.create "sae" "Sparse autoencoders against ground truth" with
        Paragraphs =
          [ $"""Four SAE architectures with SAELens's definitions (standard ReLU with the L1 term weighted by decoder-row norms, Anthropic's April 2024 update; TopK; BatchTopK; JumpReLU with a straight-through threshold) are trained at the same width and budget on each benchmark: Adam with warm-up and a final decay, inputs scaled to E‖x‖ = √d_in (folded back into the weights), unit-norm decoder rows except for the standard SAE, and the aux-k loss for latents silent for {t.Sae.Training.DeadWindow} steps. One seed per SAE; the numbers below carry no interval."""
            $"""a. Toy model of superposition ({t.Setting.Name}, importance 0.7^i, {t.Setting.Replicates} replicates per density, the lowest-loss one kept): an SAE of width {t.Sae.DSae} on h = W x, {t.Sae.Training.Steps} steps of {t.Sae.Training.BatchSize}; k = ⌈(1 − S) × represented⌉. MMCS is over the features with ‖W_i‖ > 0.5. Best architecture per density: {String.Join("; ", toy |> List.map (fun (d, n, run) -> $"1 − S = {d}: {f3 run.Mmcs} ({Architecture.name run.Architecture}, {n} represented)"))}."""
            $"""b. Synthetic dictionary (Sharkey et al.): {s.Features} random unit features in {s.Dim} dimensions, on average {s.MeanActive} active, firing probabilities decaying {s.Decay}-fold from the first feature to the last, magnitudes uniform on [0, 1]; width {s.Sae.DSae}, {s.Sae.Training.Steps} steps of {s.Sae.Training.BatchSize} ({float s.Sae.Training.Steps * float s.Sae.Training.BatchSize / 1e6:F2}M samples), k = {s.Sae.K}. Best: {Architecture.name syn.Architecture}, MMCS {f3 syn.Mmcs}, matched |cos| {f3 syn.Matched}."""
            $"""c. Toy language: {l.HookName} of the MoE decoder ({r.Language.ModelSource}), {l.TrainSequences} training sequences, width {l.Sae.DSae}, {l.Sae.Training.Steps} steps; scored on {r.Language.HeldOutTokens} held-out tokens. The SAE with the best mean F1 is {Architecture.name lang.Architecture}: {f3 (meanBestF1 "sae" probes)} ({f3 (meanBestF1 "sae, best threshold" probes)} at each latent's best threshold) against random directions {f3 (meanBestF1 "random directions" probes)}, residual coordinates {f3 (meanBestF1 "residual coordinates" probes)} and expert weights {f3 (meanBestF1 "expert weights" probes)}."""
            (match absorption with
             | Some(parent, children, total) ->
                 let worst = children |> List.sortBy (fun (_, _, recall, _) -> recall) |> List.truncate 3
                 $"""Feature absorption: the best latent for token_class = noun (latent {parent.Candidate}, F1 {f3 parent.F1}, recall {f3 parent.Recall}) is silent while another latent specific to the noun token fires on {total:P1} of noun positions; its lowest recalls are on {String.Join(", ", worst |> List.map (fun (name, n, recall, share) -> $"{name} ({recall:P0} of {n}, absorbed {share:P0})"))}."""
             | None -> "Feature absorption: no latent detects token_class = noun, so there is nothing to absorb.")
            $"""d. Latents and experts (layer {l.Layer}, {r.Language.Experts'} experts): of {shares.Length} latents firing on enough tokens, the mean share of a latent's firings that go to its most common expert is {f3 meanShare}, against {f3 meanBaseline} for as many random tokens; {concentrated} latents send at least 90%% of their firings to one expert.""" ]
        KeyNumbers =
          [ { Label = "toy-model sparsities with MMCS ≥ 0.9 (best architecture)"; Value = $"{toy |> List.filter (fun (_, _, run) -> run.Mmcs >= mmcsGoal) |> List.length} of {toy.Length}" }
            { Label = "synthetic-dictionary MMCS (best architecture)"; Value = $"{f3 syn.Mmcs} ({Architecture.name syn.Architecture})" }
            { Label = "toy language: mean best-latent F1, SAE vs random directions"; Value = $"""{f3 (meanBestF1 "sae" probes)} vs {f3 (meanBestF1 "random directions" probes)}""" } ]
        Figures = [ mmcsFigure r; frontierFigure r; probingFigure r lang.Architecture; expertFigure r lang.Architecture ]
        Tables =
          [ metricsTable "Every SAE, every benchmark" ([ for p in r.Toy do yield! p.Runs ] @ r.Synthetic @ r.Language.Runs)
            { Title = $"Toy language: the best single candidate per feature value ({Architecture.name lang.Architecture})"
              Header = [ "feature"; "value"; "positives"; "SAE latent"; "SAE F1"; "SAE AUROC"; "SAE F1, best threshold"; "random F1"; "random AUROC"; "residual coord. F1"; "expert weight F1" ]
              Rows =
                [ for row in probes ->
                      let get name = row.Best |> List.find (fun (n, _) -> n = name) |> snd
                      let sae = get "sae"
                      [ row.Feature; row.Value; string row.Positives
                        (match sae with Some d -> string d.Candidate | None -> "")
                        (match sae with Some d -> f3 d.F1 | None -> ""); (match sae with Some d -> f3 d.Auroc | None -> "")
                        (match get "sae, best threshold" with Some d -> f3 d.F1 | None -> "")
                        (match get "random directions" with Some d -> f3 d.F1 | None -> ""); (match get "random directions" with Some d -> f3 d.Auroc | None -> "")
                        (match get "residual coordinates" with Some d -> f3 d.F1 | None -> "")
                        (match get "expert weights" with Some d -> f3 d.F1 | None -> "") ] ] } ] }

let private runJson (run: Run) =
    let m = run.Metrics
    Report.obj
        [ "benchmark", Report.text run.Benchmark
          "architecture", Report.text (Architecture.name run.Architecture)
          "d_in", Report.integer run.Sae.Config.DIn
          "d_sae", Report.integer run.Sae.Config.DSae
          "k", Report.integer run.Sae.Config.K
          "l0", Report.number m.L0
          "true_l0", Report.number run.TrueL0
          "explained_variance", Report.number m.ExplainedVariance
          "mse", Report.number m.Mse
          "cosine_similarity", Report.number m.CosineSimilarity
          "dead", Report.integer m.Dead
          "dense", Report.integer m.Dense
          "dense_frequency", Report.number SaeMetrics.denseFrequency
          "dead_at_end_of_training", Report.integer run.DeadAtEnd
          "mmcs", Report.number run.Mmcs
          "matched_mean_abs_cos", Report.number run.Matched
          "true_features", Report.integer run.TrueFeatures
          "ce_loss_recovered", (match run.Splice with Some s -> Report.number s.CeLossRecovered | None -> null)
          "kl_recovered", (match run.Splice with Some s -> Report.number s.KlRecovered | None -> null)
          "ce_clean", (match run.Splice with Some s -> Report.number s.CeClean | None -> null)
          "ce_sae", (match run.Splice with Some s -> Report.number s.CeSae | None -> null)
          "ce_zero", (match run.Splice with Some s -> Report.number s.CeZero | None -> null)
          "samples", Report.integer run.Samples
          "seconds", Report.number run.Seconds ]

/// artifacts/results/sae.json: every SAE's metrics, the probing tables and the latent–expert shares.
let toJson (r: StudyResult) : JsonNode =
    let detection (d: Probing.Detection option) =
        match d with
        | Some d -> Report.obj [ "candidate", Report.integer d.Candidate; "f1", Report.number d.F1; "precision", Report.number d.Precision; "recall", Report.number d.Recall; "auroc", Report.number d.Auroc ]
        | None -> null
    Report.obj
        [ "mmcs_goal", Report.number mmcsGoal
          "toy", Report.array [ for p in r.Toy -> Report.obj [ "density", Report.number p.Density; "represented", Report.integer p.Represented; "runs", Report.array (p.Runs |> List.map runJson) ] ]
          "synthetic", Report.array (r.Synthetic |> List.map runJson)
          "toy_language",
          Report.obj
              [ "model", Report.text r.Language.ModelSource
                "hook_name", Report.text r.Settings.Language.HookName
                "held_out_tokens", Report.integer r.Language.HeldOutTokens
                "runs", Report.array (r.Language.Runs |> List.map runJson)
                "probing",
                Report.obj
                    [ for a, rows in r.Language.Probes ->
                          Architecture.name a,
                          Report.array [ for row in rows -> Report.obj ([ "feature", Report.text row.Feature; "value", Report.text row.Value; "positives", Report.integer row.Positives ]
                                                                       @ [ for name, d in row.Best -> name, detection d ]) ] ]
                "absorption",
                Report.obj
                    [ for a, ab in r.Language.Absorption ->
                          Architecture.name a,
                          match ab with
                          | Some(parent, children, total) ->
                              Report.obj [ "parent", Report.text "token_class=noun"; "parent_latent", detection (Some parent); "absorbed_share", Report.number total
                                           "children", Report.array [ for name, n, recall, share in children -> Report.obj [ "token", Report.text name; "positions", Report.integer n; "parent_recall", Report.number recall; "absorbed_share", Report.number share ] ] ]
                          | None -> null ]
                "latent_experts",
                Report.obj
                    [ for a, shares in r.Language.Experts ->
                          Architecture.name a,
                          Report.array [ for c, fires, e, share, baseline in shares -> Report.obj [ "latent", Report.integer c; "fires", Report.integer fires; "top_expert", Report.integer e; "top_share", Report.number share; "random_share", Report.number baseline ] ] ] ]
          "seconds", Report.number r.Seconds ]

let experiment : Experiment =
    Experiment.single "sae" "sparse autoencoders: recover features in superposition, checked against ground truth" (fun scale ->
        let r = SaeStudy.run (fun line -> Console.Out.WriteLine line; Console.Out.Flush()) (settings scale)
        { Answer = answer r; Sections = [ section r ]; Results = toJson r })
