<?php
/*
 * Add posts the way WordPress itself does, through wp_insert_post (run with php-cli):
 *
 *     WP_DB=proxy php add_posts.php DOCROOT COUNT
 *
 * Creates the category "Pooling" and COUNT published posts in it, each with tags, and prints
 * their addresses as WordPress links them (permalinks) as JSON:
 * {"category": URL, "posts": [[ID, URL], ...]}.
 * Exits 1 with the error on any failure.
 */
define('WP_USE_THEMES', false);
[, $docroot, $count] = $argv;
require $docroot . '/wp-load.php';

$term = wp_insert_term('Pooling', 'category');
if (is_wp_error($term)) {
    fwrite(STDERR, 'wp_insert_term: ' . $term->get_error_message() . "\n");
    exit(1);
}
$ids = [];
for ($i = 1; $i <= (int) $count; $i++) {
    $id = wp_insert_post([
        'post_title' => "Pooled post $i",
        'post_content' => "<!-- wp:paragraph --><p>Post $i: a shared-hosting site behind a connection pooler. "
            . str_repeat("Every page view runs a few dozen statements. ", 20) . "</p><!-- /wp:paragraph -->",
        'post_status' => 'publish',
        // A minute apart, oldest first: lists ordered by date alone (home, feed, recent posts) have
        // one order, whichever link or session runs the query.
        'post_date' => wp_date('Y-m-d H:i:s', time() - 60 * ((int) $count + 1 - $i)),
        'post_author' => 1,
        'post_category' => [$term['term_id']],
        'tags_input' => ['proxy', "tag-$i"],
    ], true);
    if (is_wp_error($id)) {
        fwrite(STDERR, 'wp_insert_post: ' . $id->get_error_message() . "\n");
        exit(1);
    }
    $ids[] = $id;
}
// As saving Settings > Permalinks does. The installer turned pretty permalinks on after the
// taxonomies were registered, so its rewrite rules have no category archive (/category/NAME/ is a 404).
flush_rewrite_rules();
echo json_encode(['category' => get_category_link($term['term_id']), 'posts' => array_map(fn($id) => [$id, get_permalink($id)], $ids)]), "\n";
