<?php
/*
 * wp-config.php of the WordPress site the tests and bench/wordpress.py run (tests/wordpress_site.py
 * copies Debian's /usr/share/wordpress into a temp dir and puts this file in it). Debian's own
 * wp-config.php reads /etc/wordpress/config-<host>.php; this one reads site.json, which sits
 * beside the document root (never served) and names the database accounts the site may use.
 *
 * Which account a request uses: its X-WP-DB header (the tests fetch the same page through the
 * proxy and directly from one PHP server), else $WP_DB from the environment (php-cli scripts),
 * else site.json's default. A site owner's wp-config.php has just the four DB_* lines.
 */
$site = json_decode(file_get_contents(dirname(__DIR__) . '/site.json'), true);
$target = $_SERVER['HTTP_X_WP_DB'] ?? (getenv('WP_DB') ?: $site['default']);
if (!isset($site['targets'][$target])) {
    http_response_code(400);
    exit("unknown database target\n");
}
$db = $site['targets'][$target];

define('DB_NAME', $site['database']);
define('DB_USER', $db['user']);
define('DB_PASSWORD', $db['password']);
define('DB_HOST', $db['host']);  // '127.0.0.1:3307' for the proxy: host and port, as WordPress takes them
define('DB_CHARSET', 'utf8mb4');
define('DB_COLLATE', '');
$table_prefix = 'wp_';

foreach (['AUTH_KEY', 'SECURE_AUTH_KEY', 'LOGGED_IN_KEY', 'NONCE_KEY',
          'AUTH_SALT', 'SECURE_AUTH_SALT', 'LOGGED_IN_SALT', 'NONCE_SALT'] as $key) {
    define($key, $site['secret'] . $key);
}

// Every database error WordPress meets ("WordPress database error ...") and every PHP warning
// mysqli raises go to one log per account, which the tests read; nothing is shown in pages.
define('WP_DEBUG', true);
define('WP_DEBUG_LOG', $site['log_dir'] . '/' . $target . '.log');
define('WP_DEBUG_DISPLAY', false);

// The machine has no route out: no update checks or other calls home, and no cron requests
// that would run at random moments of a measurement.
define('WP_HTTP_BLOCK_EXTERNAL', true);
define('AUTOMATIC_UPDATER_DISABLED', true);
define('DISABLE_WP_CRON', true);
define('WP_HOME', $site['url']);
define('WP_SITEURL', $site['url']);

if (!defined('ABSPATH')) {
    define('ABSPATH', __DIR__ . '/');
}
require_once ABSPATH . 'wp-settings.php';
