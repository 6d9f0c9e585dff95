"""日本語の文面。英語からの直訳ではなく、日本の ML エンジニアが書く報告書の文体で書く。用語と表記は
docs/glossary-ja.md に揃える(例: eval loss は「評価損失」、GPU-hours は「GPU時間」、measured は「実測」、
not measured は「未測定」)。全角文字と半角英数字のあいだに空白を入れない。ただしオプションやコマンドなど
入力する文字列の前後には空白を置く。かっこは半角の ( ) を使う。文は「。」で終える。"""

from __future__ import annotations

JA: dict[str, str] = {
    "title": "ファインチューニング方針レポート",
    "unit_s": "秒",
    "unit_min": "分",
    "unit_h": "時間",
    "summary": "結論",
    # 要点1: 品質目標と時間予算
    "p_quality": "<b>【品質目標と時間予算】</b> 品質目標は{target}です({source})。{met}{budget}",
    "src_given": "--quality-target で指定",
    "src_demo": "デモで設定した値",
    "src_bench": "ftopt bench の --quality-target で指定",
    "src_derived": "未指定のため、スイープ内で最良の評価損失に5%を上乗せした値を使っており、実行どうしの相対比較にしか"
    "使えません",
    "met_some": "正常に完了した{total}件の実行のうち、{n}件が品質目標を達成しました。",
    "unmeasured_note": "{labels}はこの指標が未測定のため、品質目標の判定から除いています。",
    "met_none": "品質目標を達成した実行はありません。最も近かったのは{label}({value})です。まだ本番規模には進めず、"
    "学習を長くする、より性能の高いベースモデルから始める、品質目標を見直す、のいずれかを検討してください。",
    "nothing_to_learn": "なお、すべての実行で学習開始時の学習損失がほぼ0でした。ベースモデルはすでにこのタスクを解けており、"
    "品質の数値にはファインチューニングの効果が表れていません。",
    "nothing_to_learn_full": "なお、学習前(ステップ0)に評価した実行({total}件中{n}件)ではすべて、ベースモデルの"
    "{metric}がすでに満点でした。ファインチューニングで改善する余地がないため、品質の数値にはその効果が表れていません。"
    "評価データをより難しくするか、ベースモデルが満点にならない指標を選んでください。",
    "nothing_learned": "タスクはまったく学習されていません。すべての実行で{metric}が0でした。学習が短すぎるか、"
    "設定に誤りがあります。時間とメモリの数値は有効ですが、品質の数値は判断に使えません。",
    "budget_none": "時間予算(--max-hours)は指定されていません。",
    "budget_fits": "本番の学習1回の所要時間は{hours}と予測され、時間予算の{budget}に収まります。",
    "budget_over": "本番の学習1回の所要時間は{hours}と予測され、時間予算の{budget}を超えます。GPUまたはノードを"
    "増やすか、データ量またはエポック数を減らしてください。",
    "budget_given": "時間予算は学習1回あたり{budget}です。",
    # 要点2: GPUメモリに収めるための手法
    "p_memory": "<b>【メモリ削減手法】</b> {what}",
    "mem_none_needed": "メモリ削減手法は不要です。{label}はLoRA、ベースモデルの量子化、8ビットまたはページング対応の"
    "オプティマイザ、勾配チェックポイント、ZeRO、FSDP2のいずれも使いません。{fit}",
    "mem_needed": "推奨する組み合わせである{label}は、{techniques}を使います。{fit}",
    # mem_needed に並べる手法名(report.decision.memory_techniques)
    "tech_lora": "LoRA(ランク{r})",
    "tech_qlora": "QLoRA(ベースモデルを{quant}で4ビット量子化、ランク{r})",
    "tech_int8": "ベースモデルの8ビット量子化(LLM.int8())",
    "tech_adamw_8bit": "8ビットAdamW",
    "tech_paged_adamw_8bit": "ページング対応の8ビットAdamW",
    "tech_paged_adamw": "ページング対応のAdamW",
    "tech_gc": "勾配チェックポイント",
    "tech_fsdp_full": "FSDP2によるパラメータ・勾配・オプティマイザ状態のシャーディング(full)",
    "tech_fsdp_grad_op": "FSDP2によるシャーディング(grad-op: 順伝播から逆伝播まではパラメータをall-gatherしたまま保持)",
    "tech_offload_optimizer": "オプティマイザ状態のCPUオフロード",
    "tech_offload_all": "パラメータとオプティマイザ状態のCPUオフロード",
    "tech_sep": "、",
    "fit_target": "{gpu}では、GPU 1台あたり{cap}のうち{need}を使うと予測されます。",
    "fit_target_no": "{gpu}ではGPU 1台あたり{need}が必要と予測され、搭載メモリの{cap}を超えます。"
    "メモリ削減手法を増やした組み合わせを選ぶか、GPUを増やしてください。",
    "fit_poc": "{hardware}で実測したピークメモリはGPU 1台あたり{need}でした。",
    # 要点3: PoCから本番へ
    "p_scale": "<b>【PoCから本番へ】</b> {what}",
    "scale_best": "本番に進める組み合わせは<b>{label}</b>です。PoCではGPU {gpus}台で1エポックあたり{time}"
    "({gpuh} GPU時間)でした。{production}",
    "scale_none": "品質目標を達成した実行がないため、本番に進める組み合わせはまだありません。",
    "scale_unfit": "品質目標を達成した組み合わせ({labels})は、予測では本番GPUのメモリに収まりません。本番に進める"
    "組み合わせはまだありません。GPUを増やして本番モデルを計画し直すか、本番GPUに収まる組み合わせを次のPoCに"
    "加えてください。",
    "production": "{model}を{gpu} {gpus}台で{tokens}トークン×{epochs}エポック学習すると、1回あたり{hours}"
    "({gpuh} GPU時間)、費用は1回あたり{cost}、年{retrains}回再学習すると年間{cost_year}と予測されます。",
    "production_nocost": "{model}を{gpu} {gpus}台で{tokens}トークン×{epochs}エポック学習すると、1回あたり{hours}"
    "({gpuh} GPU時間)、年{retrains}回再学習すると年間{gpuh_year} GPU時間と予測されます。"
    "--cost-per-gpu-hour を指定すると費用も表示します。",
    "production_missing": "--target-gpu と --dataset-tokens を指定すると、本番の時間と費用を予測します。",
    "alternative": "次に安い候補は{label}で、1回あたり{gpuh} GPU時間{cost}です。",
    "alternative_cheaper": "本番の予測では{label}のほうが安く、1回あたり{gpuh} GPU時間{cost}ですが、{reason}ため"
    "採用していません。",
    "cheaper_tied": "推奨とはばらつきの範囲内で同等であり、{by}で推奨を選んだ",
    "cheaper_measured": "PoCのハードウェア(本番と同じ)での実測では、ばらつきを超えて遅かった",
    "quality_poc_only": "品質はPoCのモデル({poc})でのみ測定しており、本番モデルの品質はここでは予測していません。"
    "パイロットで測定します。",
    "alternative_none": "測定した組み合わせのうち、品質目標を達成し、かつ本番GPUのメモリに収まるものはほかにありません。",
    "tradeoff": "一方で、推奨する組み合わせには不利な点もあります: {tradeoff}。",
    "tradeoff_none": "推奨する組み合わせには、ほかの実行と比べて測定で分かるほどの不利はありません。",
    "uncalibrated": "{gpu}の時間モデルは、まだ実機での実行で較正されていません(ftopt bench --gpu {gpu})。"
    "定数は既定値({figures})で、ステップごとのオーバーヘッドを0として計算しているため、"
    "小さなモデルほど短く予測されます。実際の値はパイロットで測定します。",
    "tc_figures": "MFU {mfu}、演算子1回あたり{kernel} µs、ステップごとの固定時間{fixed} ms{zero}",
    "tc_at_bound": "ただし、このうち{n}個の定数はフィッティングの上限または下限に張り付いており(実行結果からは"
    "個別に決まりませんでした)、予測時間の扱いには注意してください。",
    "calibrated_with": "{gpu}の時間モデルには、{sources}の{runs}回の実行で較正した定数({figures}、{date}時点)を"
    "使っています。",
    "tradeoff_quality": "最も品質の高い{label}より{metric}が{delta}劣る点",
    "tradeoff_time": "同じGPU台数で最速の実行({label}、目標{met})より、ばらつきを超えて{pct}長くかかる点",
    "calibration": "時間モデルは{fit}件の実行で較正しました。各組み合わせのステップ時間を、それ以外の実行だけで"
    "較正したモデルで予測したときの誤差は中央値{med}、最大{worst}です。{rho}{pairs}",
    "calibration_rho": "スピアマンの順位相関は{rho}です。",
    "calibration_pairs": "10%以上差のある組み合わせのペアのうち{ordered}/{compared}で、大小関係を正しく予測しました。",
    # 要点4: プランの推奨と実測による推奨
    "p_verified": "<b>【推奨の検証】</b> {basis}{verdict}{tie}{plan_def}",
    "basis_measured": "{hardware}で実測した1エポックあたりのGPU秒で選びました。各実行の最初の{warmup}ステップは"
    "ウォームアップ(初回のメモリ確保やカーネル選択)として除き、残りのステップ時間の中央値とばらつき(四分位範囲)"
    "を使っています。ばらつきが重なる実行どうしは同等とみなします。",
    "repeats_pooled": "同じ組み合わせを繰り返した実行は1つの候補として扱い、ウォームアップ後のステップ時間をまとめて"
    "中央値とばらつきを求めました({items})。",
    "repeat_item": "{label}は{runs}回分の{steps}ステップ",
    "basis_projected": "PoCと本番では{because}が異なるため、品質目標を達成した実行の中から、PoCの秒数ではなく、"
    "プランナーが本番について予測したGPU時間({gpu}での実行で較正済みならその定数による値)で選びました。"
    "予測の差が{pct}({gpu}での時間モデルの誤差)以内の組み合わせは同等とみなします。",
    "diff_gpu": "GPU(PoCは{poc}、本番は{target})",
    "diff_model": "モデル(PoCは{poc}、本番は{target})",
    "diff_gpus": "GPU台数(PoCは{poc}台、本番は{target}台)",
    "plan_def": "(プランの推奨とは、測定した組み合わせの中からプランナーが{gpu}向けに推奨するものです。)",
    "verified": "プランの推奨({plan})は実測による推奨と一致しており、推奨は検証済みです。",
    "why_quality": "プランの推奨は{plan}でしたが、品質目標に届かなかったため({value})、実測に基づき{best}を推奨します。",
    "why_unmeasured": "プランの推奨は{plan}でしたが、その実行では{metric}を測定していないため品質目標と照らし合わせられず、"
    "実測に基づき{best}を推奨します。",
    "why_failed": "プランの推奨は{plan}でしたが、実行が完了しなかったため({status})、実測に基づき{best}を推奨します。",
    "why_slower": "プランの推奨は{plan}でしたが、実測では{best}より{pct}多くGPU時間がかかり、その差は両者のステップ"
    "時間のばらつきを超えています。このため、プランより実測の結果を優先します。",
    "why_tie": "プランの推奨は{plan}でしたが、{best}との差はばらつきの範囲内で同等です。{by}により{best}を選びました。",
    "plan_none": "プランの予測が記録された実行がないため、プランの推奨と照らし合わせられません。",
    "tie_note": "{others}とはばらつきの範囲内で同等で、{by}により選びました。",
    "by_quality": "品質の高さ",
    "by_memory": "実測ピークメモリの小ささ",
    "by_plan": "本番ハードウェアでのプランの予測",
    "no_runs": "正常に完了した実行がないため、実測に基づく推奨はできません。失敗した実行は{failed}です。",
    # 表
    "results": "実測結果(PoC)",
    "col_combination": "組み合わせ",
    "col_gpus": "GPU台数",
    "col_status": "状態",
    "col_peak": "実測ピークメモリ(GPU 1台あたり)",
    "col_pred": "予測ピークメモリ",
    "col_epoch": "1エポックあたりの時間",
    "col_spread": "ステップ時間のばらつき",
    "col_gpuh": "1エポックあたりのGPU時間",
    "col_loss": "評価損失",
    "col_ppl": "パープレキシティ",
    "col_met": "品質目標の達成",
    "col_cost": "1エポックあたりの費用",
    "yes": "はい",
    "no": "いいえ",
    "met": "達成",
    "not_met": "未達",
    "not_measured": "未測定",
    "recommended": "推奨",
    "status_ok": "完了",
    "status_oom": "メモリ不足",
    "status_error": "エラー",
    "status_failed": "失敗(測定値なし)",
    "padded_rows": "予測ピークメモリは、すべてのシーケンスが --seq-len のトークン数ちょうどであると仮定しています。"
    "--batching padded (既定) の実行では、各マイクロバッチをその中で最も長いシーケンスの長さまでしかパディングしないため、"
    "データがこれより短いと実測ピークメモリは予測を下回ります。",
    "production_h": "本番の予測",
    "production_assume": "プランナーによる予測です。条件は{model}、{gpu} {gpus}台({precision}、シーケンス長{seq_len}、"
    "マイクロバッチ{micro_batch})、{tokens}トークン×{epochs}エポック、年{retrains}回の再学習です。",
    "shape_default": "シーケンス長とマイクロバッチはPoCの値ではなく、{gpu}でのプランの既定値です。"
    "--target-seq-len と --target-micro-batch で変更できます。",
    "col_fits": "GPUメモリに収まるか",
    "col_hours": "1回あたりの時間",
    "col_gpuh_run": "1回あたりのGPU時間",
    "col_gpuh_year": "年間GPU時間",
    "col_cost_run": "1回あたりの費用",
    "col_cost_year": "年間費用",
    "col_budget": "時間予算内か",
    "roadmap_h": "段階的な進め方",
    "col_gpuh_stage": "GPU時間",
    "col_cost_stage": "費用",
    "col_stage": "段階",
    "col_basis": "根拠",
    "col_decides": "この段階で決めること",
    "col_stop": "中止する条件",
    "measured": "実測",
    "predicted": "予測",
    "stage_poc": "PoC",
    "stage_pilot": "パイロット",
    "stage_production": "本番(年間)",
    "decides_poc": "品質目標を最も安く達成する組み合わせ",
    "stop_poc": "品質目標を達成する実行がない",
    "decides_pilot": "本番GPUで実データの{pct}を1エポック学習し、品質が保たれるか、時間とメモリの予測が正しいかを確かめる",
    "stop_pilot": "品質目標に届かない、またはステップ時間が予測の{x}倍を超える",
    "decides_production": "年{retrains}回の再学習に必要な年間予算",
    "stop_production": "学習1回が時間予算を超える、または年間費用がタスクの価値を上回る",
    # グラフ
    "charts": "グラフ",
    "chart_memory": "GPU 1台あたりの予測メモリ内訳(棒)と実測ピークメモリ(黒い印)",
    "chart_pareto": "1エポックあたりのGPU秒とピークメモリ(線: 品質目標を達成した実行のパレートフロント、"
    "薄い点: 品質目標に届かなかった実行と未測定の実行、星印: 推奨する実行)",
    "chart_quality": "組み合わせごとのタスク品質と品質目標",
    "chart_parity": "ピークメモリの予測値と実測値",
    "ax_mib_per_gpu": "GPU 1台あたりのメモリ(MiB)",
    "ax_peak": "実測ピークメモリ(MiB、GPU 1台あたり)",
    "ax_gpu_seconds": "1エポックあたりのGPU秒",
    "ax_predicted": "予測ピークメモリ(MiB)",
    "ax_measured": "実測ピークメモリ(MiB)",
    "lg_pareto": "パレートフロント",
    "lg_capacity": "GPUメモリ",
    "lg_recommended": "推奨",
    "lg_exact": "予測=実測",
    "lg_target": "品質目標",
    "ax_loss": "評価損失(低いほど良い)",
    "ax_metric": "{metric}(高いほど良い)",
    "ax_metric_low": "{metric}(低いほど良い)",
    "chart_nothing": "学習されていません",
    "cat_weights": "重み",
    "cat_master_weights": "マスター重み",
    "cat_optimizer_states": "オプティマイザ状態",
    "cat_gradients": "勾配",
    "cat_activations": "アクティベーション",
    "cat_logits_loss": "ロジットと損失",
    "cat_engine_buffers": "エンジンのバッファ",
    "cat_temporaries": "一時領域",
    "m_analytic": "解析的推定",
    "m_traced": "トレースによる推定",
    "footer": "ftopt で作成しました。予測値はGPU 1台あたりの値で、実測値は表に示した実行から得たものです。",
}
