# xymqtt_generate(): filled in by the generator.
